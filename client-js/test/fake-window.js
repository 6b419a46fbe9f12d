// A fake browser window for the unit tests: storage, cookies, location and history, a WebSocket
// the test drives, fetch and sendBeacon that record what they get, and timers on a clock the
// test moves. The real browser is exercised by tests/test_snippet_browser.py.

import { webcrypto } from 'node:crypto'

import { install } from '../src/client.js'

export class FakeStorage {
  constructor(broken) {
    this.items = new Map()
    this.broken = broken
  }

  getItem(key) {
    if (this.broken) throw new Error('SecurityError')
    return this.items.has(key) ? this.items.get(key) : null
  }

  setItem(key, value) {
    if (this.broken) throw new Error('QuotaExceededError')
    this.items.set(key, String(value))
  }

  removeItem(key) {
    if (this.broken) throw new Error('SecurityError')
    this.items.delete(key)
  }
}

/** The state a browser keeps across pages of one origin (and, for the session, one tab). */
export class Browser {
  constructor({ broken = false } = {}) {
    this.localStorage = new FakeStorage(broken)
    this.sessionStorage = new FakeStorage(broken)
    this.broken = broken
    this.cookies = new Map()
    this.now = 1_800_000_000_000
  }

  /** Open a page at `href` with the snippet's script tag; returns its FakeWindow. */
  open(href, options = {}) {
    return new FakeWindow(this, href, options)
  }
}

let socketIds = 0

export class FakeSocket {
  constructor(win, url) {
    this.win = win
    this.url = url
    this.id = ++socketIds
    this.frames = []
    this.closed = false
    win.sockets.push(this)
  }

  send(text) {
    if (this.closed) throw new Error('sent on a closed socket')
    this.frames.push(JSON.parse(text))
  }

  close() {
    if (this.closed) return
    this.closed = true
    this.win.setTimeout(() => this.onclose && this.onclose({ code: 1005 }), 0)
  }

  // Test side.

  accept() {
    this.onopen({})
  }

  /** The server's reply, as a JSON text frame. */
  reply(message) {
    this.onmessage({ data: JSON.stringify(message) })
  }

  /** The connection dies (refused handshake, network gone). */
  die() {
    this.closed = true
    this.onclose({ code: 1006 })
  }

  /** messageIds of every event sent on this socket, in order. */
  get sent() {
    return this.frames.flatMap((f) => f.batch.map((e) => e.messageId))
  }

  /** Ack every event sent so far. */
  ackAll() {
    this.reply({ ack: this.sent })
  }
}

export class FakeWindow {
  constructor(browser, href, { key = 'pk_test', data = {}, stub, crypto = webcrypto, src } = {}) {
    this.browser = browser
    this.sockets = []
    this.fetches = []
    this.beacons = []
    this.beaconAccepts = true
    this.timers = []
    this.listeners = []
    this.localStorage = browser.localStorage
    this.sessionStorage = browser.sessionStorage
    this.crypto = crypto
    this.scrollY = 0
    this.innerHeight = 800
    this.location = {}
    this.setURL(href)
    const win = this
    this.WebSocket = function WebSocket(url) {
      return new FakeSocket(win, url)
    }
    this.navigator = {
      language: 'en-GB',
      sendBeacon(url, body) {
        win.beacons.push({ url, body: JSON.parse(body) })
        return win.beaconAccepts
      },
    }
    this.fetch = (url, init) =>
      new Promise((resolve, reject) => {
        this.fetches.push({
          url,
          init,
          body: JSON.parse(init.body),
          respond(status) {
            if (status) resolve({ status, ok: status >= 200 && status < 300 })
            else reject(new TypeError('Failed to fetch'))
          },
        })
      })
    this.history = {
      pushState: (state, title, url) => this.setURL(new URL(url, this.location.href).href),
      replaceState: (state, title, url) => this.setURL(new URL(url, this.location.href).href),
    }
    const cookies = browser.cookies
    const dataset = key ? { key, ...data } : { ...data }
    this.document = {
      referrer: 'https://search.example/?q=shoes',
      title: 'A shop',
      visibilityState: 'visible',
      documentElement: { scrollHeight: 4000 },
      currentScript: { src: src || 'https://rt.example/rt.js', dataset },
      addEventListener: (type, f) => this.listeners.push({ target: 'document', type, f }),
      get cookie() {
        if (browser.broken) throw new Error('SecurityError: sandboxed')
        return [...cookies].map(([k, v]) => k + '=' + v).join('; ')
      },
      set cookie(text) {
        if (browser.broken) throw new Error('SecurityError: sandboxed')
        const [pair, ...attributes] = text.split('; ')
        const [name, value] = pair.split('=')
        if (attributes.includes('max-age=0')) cookies.delete(name)
        else cookies.set(name, value)
      },
    }
    if (stub) this.rt = stub
  }

  setURL(href) {
    const url = new URL(href)
    Object.assign(this.location, {
      href: url.href,
      pathname: url.pathname,
      search: url.search,
      protocol: url.protocol,
      host: url.host,
    })
  }

  addEventListener(type, f) {
    this.listeners.push({ target: 'window', type, f })
  }

  /** Fire an event at the window (or the document with `target`). */
  dispatch(type, target = 'window') {
    for (const l of this.listeners) if (l.type == type && l.target == target) l.f({ type })
  }

  setTimeout(f, ms) {
    const timer = { at: this.browser.now + (ms || 0), f, id: this.timers.length + 1 }
    this.timers.push(timer)
    return timer.id
  }

  clearTimeout(id) {
    this.timers = this.timers.filter((t) => t.id !== id)
  }

  /** Move the clock `ms` forward, running every timer that comes due, in order. */
  tick(ms = 0) {
    const end = this.browser.now + ms
    for (;;) {
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at)[0]
      if (!due) break
      this.timers = this.timers.filter((t) => t !== due)
      this.browser.now = Math.max(this.browser.now, due.at)
      due.f()
    }
    this.browser.now = end
  }

  /** When the next timer is due, in ms from now (undefined if none). */
  nextTimer() {
    const next = Math.min(...this.timers.map((t) => t.at))
    return Number.isFinite(next) ? next - this.browser.now : undefined
  }

  /** Load the snippet (as the script tag would) and return `rt`. */
  load() {
    return install(this)
  }

  get socket() {
    return this.sockets[this.sockets.length - 1]
  }

  stats() {
    return this.rt('stats')
  }
}

/** A stub as the README's tag defines it, with `calls` queued before the file loads. */
export function stubWith(...calls) {
  const rt = function () {
    ;(rt.q = rt.q || []).push(arguments)
  }
  for (const call of calls) rt(...call)
  return rt
}
