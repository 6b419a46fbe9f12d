// The snippet: the `rt(command, ...args)` API (configuration, identity, consent, page views and
// implicit signals) and the delivery of its events: a queue kept until the server acks, one
// WebSocket per tab, an HTTP fallback, the beacon on the way out, and a copy of the queue in
// localStorage; the frames are those of the server's WebSocket protocol (batch in; ack, reject
// or nack out). One closure, so that the minifier can shorten every name: the size budget is
// 3 KB gzipped.

import { MAX_BATCH_CHARS, backoff, eventName, object, parse, storage, take, uuid } from './util.js'

export const VERSION = '0.1.0'

/** rt('productAdded', {...}) and friends track Segment E-commerce v2 names: "Product Added". */
export const HELPERS = (
  'productViewed productAdded productRemoved cartViewed checkoutStarted orderCompleted ' +
  'productsSearched signedUp'
).split(' ')

const MAX_QUEUE = 250
const WINDOW_MS = 20
// No reply for this long while events are in flight (or no handshake): the socket is dead even
// if the browser has not noticed (a half-open TCP connection), so drop it and resend.
const ACK_TIMEOUT_MS = 10000
const QUEUE_KEY = 'rt_q'
const ID_KEY = 'rt_aid'
const USER_KEY = 'rt_uid'
const CONSENT_KEY = 'rt_c'
const SESSION_KEY = 'rt_s'
const SCROLL_STEP = 25

// An option from a data attribute ("" when present, "false" to turn off) or from init().
const flag = (value) => value != null && value !== false && value != 'false'

/**
 * Install the snippet on `win` (the browser's window, or a fake one in tests): replace the stub
 * `rt` (replaying the calls it queued) and return the real `rt`. Nothing it does throws into the
 * page: every entry point is wrapped and failures are counted in rt('stats').errors.
 */
export function install(win) {
  const stub = win.rt
  if (stub && stub.v) return stub // loaded twice: the first one stays
  const doc = win.document
  const loc = win.location
  // Counters (acked, rejected, dropped, errors, posts, beacons, opens, fails), each there
  // once it is not 0, and the ms from rt(...) to the server's ack of the last 100 events.
  const stats = { latency: [] }
  const count = (name) => (stats[name] = (stats[name] || 0) + 1)
  const safe =
    (f) =>
    (...args) => {
      try {
        return f(...args)
      } catch (e) {
        count('errors')
      }
    }
  const later = (f, ms) => win.setTimeout(safe(f), ms)
  const cancel = (timer) => win.clearTimeout(timer)
  const local = storage(win, 'localStorage')
  const tab = storage(win, 'sessionStorage')
  const options = { autoPage: 1 }
  const allowed = () => !options.consent || granted
  const ready = () => options.key && options.host && allowed()
  const visible = () => doc.visibilityState != 'hidden'
  let granted, started, anonymousId, userId, timezone, here, path
  let session = {} // this tab's landing facts: campaign (UTM) and, opt-in, the referrer
  let referrer = doc.referrer
  let depth = 0 // scroll depth reported for this page view, in percent
  let spent = 0 // ms this page view was visible, before `shown`
  let shown = 0 // when it became visible again (0 while hidden)

  // Delivery. `queue` holds the events not acked yet, oldest first, as records {e: event,
  // t: when it was queued, s: the socket (or 1: HTTP) carrying it now}.
  let queue = []
  let socket, open, flushTimer, retryTimer, watchdog, posting
  let fails = 0 // connection attempts in a row that never opened (2: WebSockets look blocked)
  let tries = 0 // failures since the last ack: the backoff exponent

  const endpoint = () => options.host + '/v1/batch'
  const frame = (batch, writeKey) => JSON.stringify({ batch: batch.map((q) => q.e), writeKey })
  const save = () => allowed() && local(QUEUE_KEY, JSON.stringify(queue.map((q) => q.e)))

  function enqueue(e) {
    if (JSON.stringify(e).length > MAX_BATCH_CHARS) return count('dropped') // never storable
    if (queue.push({ e, t: Date.now() }) > MAX_QUEUE) {
      queue.shift()
      count('dropped')
    }
    save()
    flushTimer = flushTimer || later(flush, WINDOW_MS)
  }

  // Acked (stored) or rejected (never will be): either way these events leave the queue.
  function settle(ids, acked) {
    queue = queue.filter((q) => {
      if (!ids.includes(q.e.messageId)) return 1
      if (acked) {
        count('acked')
        if (stats.latency.push(Date.now() - q.t) > 100) stats.latency.shift()
      } else count('rejected')
    })
    save()
  }

  function reply(message, s) {
    cancel(watchdog)
    watchdog = 0
    if (message.ack) {
      tries = 0
      settle(message.ack, 1)
    }
    if (message.reject) settle(message.reject.map((r) => r.messageId))
    if (message.nack) {
      queue.forEach((q) => message.nack.includes(q.e.messageId) && (q.s = 0))
      later(flush, message.retry_after_ms)
    }
    if (queue.some((q) => q.s == s)) watch(s)
  }

  function watch(s) {
    watchdog = watchdog || later(() => drop(s, open), ACK_TIMEOUT_MS)
  }

  // The socket `s` is gone (or given up on): its events in flight go back to the queue.
  function drop(s, opened) {
    if (socket != s) return // replaced already, or closed on purpose (consent withdrawn)
    socket = open = 0
    cancel(watchdog)
    watchdog = 0
    queue.forEach((q) => q.s == s && (q.s = 0))
    if (!opened) {
      fails++
      count('fails')
    }
    if (queue[0]) retry()
    s.close()
  }

  function retry() {
    retryTimer =
      retryTimer ||
      later(() => {
        retryTimer = 0
        flush()
      }, backoff(tries++))
  }

  function connect() {
    let opened, s
    try {
      s = socket = new win.WebSocket(
        options.host.replace(/^http/, 'ws') + '/v1/ws?key=' + encodeURIComponent(options.key),
      )
    } catch (e) {
      fails = 2 // no WebSocket, or refused outright (mixed content, CSP): use HTTP
      return
    }
    s.onopen = safe(() => {
      cancel(watchdog)
      watchdog = fails = 0
      opened = open = 1
      count('opens')
      flush()
    })
    s.onmessage = safe((m) => reply(JSON.parse(m.data), s))
    s.onclose = safe(() => drop(s, opened))
    watch(s) // the handshake has as long as an ack
  }

  // The fallback while WebSockets fail: POST /v1/batch as text/plain (no preflight).
  function post() {
    const batch = take(queue)
    const request = win.fetch(endpoint(), {
      method: 'POST',
      body: frame(batch, options.key),
      keepalive: true,
    })
    batch.forEach((q) => (q.s = 1))
    posting = 1
    count('posts')
    request
      .then((response) => {
        // 429 (over this address's budget) and 5xx: kept and sent again after the backoff.
        // rtserver answers no other status above 428, so one comparison covers both.
        if (response.status > 428) throw response
        tries = 0
        settle(
          batch.map((q) => q.e.messageId),
          response.ok, // any other 4xx will never succeed: drop
        )
      })
      .catch(() => {
        batch.forEach((q) => (q.s = 0))
        retry()
      })
      .then(
        safe(() => {
          posting = 0
          flush()
        }),
      )
  }

  function flush() {
    cancel(flushTimer)
    flushTimer = 0
    if (!ready()) return
    let batch
    while (open && (batch = take(queue))[0]) {
      socket.send(frame(batch))
      batch.forEach((q) => (q.s = socket))
      watch(socket)
    }
    if (!open && !retryTimer && take(queue)[0]) {
      if (!socket) connect()
      if (fails > 1 && !posting) post()
    }
  }

  // Start delivering (consent given, or a key configured): take over what earlier pages left
  // unacked in localStorage, and connect.
  function resume() {
    if (!ready()) return
    const known = queue.map((q) => q.e.messageId)
    queue = parse(local(QUEUE_KEY), [])
      .filter((e) => e && !known.includes(e.messageId))
      .map((e) => ({ e, t: Date.now() }))
      .concat(queue)
      .slice(-MAX_QUEUE)
    save()
    if (!socket) connect()
    flush()
  }

  // The page is going away (or hidden): hand the unacked events to the browser. They stay
  // queued and stored, so the next page resends them; the server drops the duplicates.
  function beacon() {
    const batch = take(queue, 1)
    if (!batch[0] || !ready()) return
    count('beacons')
    const nav = win.navigator
    const body = frame(batch, options.key)
    if (!nav.sendBeacon(endpoint(), body)) {
      win.fetch(endpoint(), { method: 'POST', body, keepalive: true }).catch(() => {})
    }
  }

  // Identity, pages and signals.

  function configure(o) {
    for (const k in o) options[k] = k == 'key' || k == 'host' ? o[k] : flag(o[k])
    if (options.host) options.host = String(options.host).replace(/\/+$/, '')
  }

  // Read (no value) or write the anonymousId cookie. Cookies can be off or forbidden (sandboxed
  // frames throw): then localStorage alone keeps the id, or nothing does.
  function cookie(value, maxAge) {
    try {
      if (value == null) return (/rt_aid=([^;]+)/.exec(doc.cookie) || [])[1]
      doc.cookie = ID_KEY + '=' + value + '; path=/; max-age=' + maxAge + '; SameSite=Lax'
    } catch (e) {
      // no cookies here
    }
  }

  // Keep the ids (cookie + localStorage) and the landing facts, if consent allows storing.
  function remember() {
    if (!allowed()) return
    local(ID_KEY, anonymousId)
    local(USER_KEY, userId || null)
    tab(SESSION_KEY, JSON.stringify(session))
    cookie(anonymousId, 31536000)
  }

  const pageInfo = () => ({
    path: loc.pathname,
    url: loc.href,
    search: loc.search,
    title: doc.title,
    referrer,
  })

  function send(type, fields, context) {
    const e = Object.assign(
      {
        type,
        messageId: uuid(win.crypto),
        anonymousId,
        timestamp: new Date().toISOString(),
        context: Object.assign(
          {
            library: { name: 'rt.js', version: VERSION },
            page: pageInfo(),
            locale: win.navigator.language,
            timezone,
            campaign: session.campaign,
            referrer: session.referrer,
          },
          context,
        ),
      },
      fields,
    )
    if (userId) e.userId = userId
    enqueue(e)
  }

  function pause() {
    if (shown) spent += Date.now() - shown
    shown = 0
  }

  // The page view ends (another page(), or the page goes away): report how long it was seen.
  function leave() {
    pause()
    const seconds = Math.round(spent / 1000)
    if (options.timeOnPage && seconds) api.track('Time On Page', { seconds, url: here })
    spent = 0
    if (visible()) shown = Date.now()
  }

  function scrolled() {
    const seen = ((win.scrollY + win.innerHeight + 1) * 100) / doc.documentElement.scrollHeight
    while (depth < 100 && seen >= depth + SCROLL_STEP) {
      api.track('Scroll Depth Reached', { percent: (depth += SCROLL_STEP), url: here })
    }
  }

  // pushState / replaceState / popstate: a new page view when the path or the query changed.
  const navigated = safe(() => path != loc.pathname + loc.search && api.page())

  const api = {
    init(o) {
      configure(o)
      if (started) resume()
    },

    page(properties) {
      if (here) {
        leave()
        if (here != loc.href) referrer = here
      }
      here = loc.href
      path = loc.pathname + loc.search
      depth = 0
      send('page', { properties: Object.assign(pageInfo(), object(properties)) })
    },

    track(event, properties) {
      send('track', { event: String(event), properties: object(properties) })
    },

    // The hashes are HMACs the shop's backend computes with the identity secret: without them
    // the server treats the userId and the email as unverified claims.
    identify(id, traits, o) {
      if (id != null) userId = id
      o = object(o)
      remember()
      send('identify', { traits: object(traits) }, { userHash: o.userHash, emailHash: o.emailHash })
    },

    alias(id, o) {
      userId = id
      remember()
      send('alias', { previousId: anonymousId }, { userHash: object(o).userHash })
    },

    // Logout: forget the user and start a new anonymous identity.
    reset() {
      userId = null
      anonymousId = uuid(win.crypto)
      remember()
    },

    consent(yes) {
      options.consent = 1
      granted = flag(yes)
      local(CONSENT_KEY, granted ? '1' : '0') // the visitor's choice itself, for the next pages
      if (granted) {
        remember()
        resume()
      } else {
        const s = socket
        queue = []
        socket = open = userId = 0
        session = {}
        if (s) s.close()
        ;[QUEUE_KEY, ID_KEY, USER_KEY].forEach((k) => local(k, null))
        tab(SESSION_KEY, null)
        cookie('', 0)
        anonymousId = uuid(win.crypto)
      }
    },

    flush,

    stats: () => Object.assign({ queued: queue.length, anonymousId, userId }, stats),
  }
  HELPERS.forEach((k) => (api[k] = (properties) => api.track(eventName(k), properties)))

  function start() {
    const choice = local(CONSENT_KEY)
    if (choice) {
      options.consent = 1
      granted = choice == '1'
    }
    anonymousId = cookie() || local(ID_KEY) || uuid(win.crypto)
    userId = local(USER_KEY)
    timezone = Intl.DateTimeFormat().resolvedOptions().timeZone
    session = parse(tab(SESSION_KEY), {})
    const campaign = {} // utm_source -> source, ..., utm_campaign -> name (Segment's names)
    for (const [k, value] of new URLSearchParams(loc.search)) {
      if (/^utm_/.test(k)) (session.campaign = campaign)[k.slice(4).replace('campaign', 'name')] = value
    }
    if (options.referrer && !session.referrer) session.referrer = { url: referrer } // the landing one
    remember()
    shown = visible() && Date.now()

    const on = (target, type, f, o) => target.addEventListener(type, safe(f), o)
    on(win, 'pagehide', () => {
      leave()
      beacon()
    })
    on(doc, 'visibilitychange', () => {
      if (visible()) return (shown = Date.now())
      pause()
      beacon()
    })
    if (options.scrollDepth) on(win, 'scroll', scrolled, { passive: true })
    if (options.autoPage) {
      const history = win.history
      ;['pushState', 'replaceState'].forEach((k) => {
        const original = history[k]
        history[k] = function () {
          const result = original.apply(this, arguments)
          navigated()
          return result
        }
      })
      on(win, 'popstate', navigated)
    }
    resume()
    if (options.autoPage) api.page()
  }

  const rt = safe((command, ...args) => api[command](...args))
  rt.v = VERSION
  // Options: the script tag's data attributes (data-key, data-time-on-page, ...), and the host
  // from its src; then the init() calls the stub queued, before anything else runs.
  safe(() => {
    const script = doc.currentScript
    configure(Object.assign({ host: script.src && new URL(script.src).origin }, script.dataset))
  })()
  const queued = (stub && stub.q) || []
  win.rt = rt
  queued.forEach((args) => args[0] == 'init' && rt.apply(0, args))
  safe(start)()
  started = 1
  queued.forEach((args) => args[0] != 'init' && rt.apply(0, args))
  return rt
}
