// Delivery: batching, acks, rejects, nacks, reconnects with backoff, the HTTP fallback, the
// beacon and the offline queue, on a fake window whose socket and fetch the test answers.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { Browser } from './fake-window.js'

const PAGE = 'https://shop.example/'

/** A page with the snippet loaded, its socket open and the page view acked: nothing queued. */
function setup(t, options = {}) {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const win = browser.open(PAGE, options)
  win.load()
  win.socket.accept()
  win.socket.ackAll()
  win.socket.frames = []
  return { browser, win }
}

const stored = (browser) => JSON.parse(browser.localStorage.getItem('rt_q') || '[]')

test('events of a short window go in one frame', (t) => {
  const { win } = setup(t)
  win.rt('track', 'A')
  win.rt('track', 'B')
  assert.equal(win.socket.frames.length, 0)
  win.tick(19)
  assert.equal(win.socket.frames.length, 0)
  win.tick(1)
  assert.equal(win.socket.frames.length, 1)
  const frame = win.socket.frames[0]
  assert.deepEqual(Object.keys(frame), ['batch'])
  assert.deepEqual(
    frame.batch.map((e) => e.event),
    ['A', 'B'],
  )
})

test('a big backlog goes in batches of at most 50 events', (t) => {
  const { win } = setup(t)
  for (let i = 0; i < 120; i++) win.rt('track', 'Tick', { i })
  win.tick(20)
  const sizes = win.socket.frames.map((f) => f.batch.length)
  assert.equal(sizes.length, 3)
  assert.ok(sizes.every((n) => n <= 50))
  assert.ok(win.socket.frames.every((f) => JSON.stringify(f).length < 21000))
  const sent = win.socket.frames.flatMap((f) => f.batch.map((e) => e.properties.i))
  assert.deepEqual(sent, [...Array(120).keys()])
})

test('an ack removes events from the queue and from localStorage, and measures latency', (t) => {
  const { browser, win } = setup(t)
  win.rt('track', 'A')
  win.tick(5)
  win.rt('track', 'B')
  win.tick(20)
  assert.equal(stored(browser).length, 2)
  win.tick(7)
  win.socket.ackAll()
  const stats = win.stats()
  assert.equal(stats.queued, 0)
  assert.equal(stats.acked, 3) // with the page view
  assert.deepEqual(stats.latency.slice(1), [32, 27])
  assert.deepEqual(stored(browser), [])
  win.socket.ackAll() // a duplicate ack changes nothing
  assert.equal(win.stats().acked, 3)
})

test('rejected events are dropped, never resent', (t) => {
  const { win } = setup(t)
  win.rt('track', 'Good')
  win.rt('track', 'Bad')
  win.tick(20)
  const [good, bad] = win.socket.sent
  win.socket.reply({ ack: [good] })
  win.socket.reply({ reject: [{ messageId: bad, error: 'bad event' }] })
  assert.equal(win.stats().queued, 0)
  assert.equal(win.stats().rejected, 1)
  win.tick(120000)
  assert.equal(win.socket.frames.length, 1)
})

test('nacked events are resent after retry_after_ms', (t) => {
  const { win } = setup(t)
  win.rt('track', 'A')
  win.tick(20)
  const [page] = win.socket.sent
  win.socket.reply({ nack: [page], retry_after_ms: 1000 })
  win.tick(999)
  assert.equal(win.socket.frames.length, 1)
  win.tick(1)
  assert.deepEqual(win.socket.sent, [page, page])
  win.socket.ackAll()
  assert.equal(win.stats().queued, 0)
})

test('events in flight on a dropped socket are resent after reconnecting with backoff', (t) => {
  const { win } = setup(t)
  t.mock.method(Math, 'random', () => 0.5) // no jitter: 1 s, 2 s, 4 s
  win.rt('track', 'A')
  win.tick(20)
  const sent = win.socket.sent
  win.socket.die()
  assert.equal(win.nextTimer(), 1000)
  win.tick(1000)
  assert.equal(win.sockets.length, 2)
  win.socket.die() // refused
  assert.equal(win.nextTimer(), 2000)
  win.tick(2000)
  win.socket.accept()
  assert.deepEqual(win.socket.sent, sent)
  win.socket.ackAll()
  assert.equal(win.stats().queued, 0)
  assert.equal(win.stats().fails, 1)
  // An ack resets the backoff.
  win.rt('track', 'B')
  win.tick(20)
  win.socket.die()
  assert.equal(win.nextTimer(), 1000)
})

test('reconnect delays have jitter of +-50% and a 60 s cap', (t) => {
  const { win } = setup(t)
  win.rt('track', 'A')
  win.tick(20)
  const delays = []
  for (let i = 0; i < 12; i++) {
    win.socket.die() // no ack since the last connection: the backoff keeps growing
    delays.push(win.nextTimer())
    win.tick(win.nextTimer())
    win.socket.accept()
  }
  delays.forEach((delay, n) => {
    const base = 1000 * 2 ** n
    assert.ok(delay >= Math.min(base / 2, 60000) && delay <= Math.min(base * 1.5, 60000), delay)
  })
  assert.equal(delays.at(-1), 60000)
})

test('a closed idle socket reconnects only when there is something to send', (t) => {
  const { win } = setup(t)
  win.socket.die()
  win.tick(120000)
  assert.equal(win.sockets.length, 1)
  win.rt('track', 'Later')
  win.tick(20)
  assert.equal(win.sockets.length, 2)
  win.socket.accept()
  assert.equal(win.socket.frames[0].batch[0].event, 'Later')
})

/** The open socket goes, then two connections are refused: WebSockets look blocked. */
function blockWebSockets(win) {
  win.socket.die() // nothing queued: no reconnect until there is something to send
  win.rt('track', 'A')
  win.tick(20)
  win.socket.die()
  win.tick(win.nextTimer())
  win.socket.die()
  assert.equal(win.stats().fails, 2)
}

test('when WebSockets keep failing, batches go by HTTP POST as text', (t) => {
  const { win } = setup(t)
  blockWebSockets(win)
  assert.equal(win.fetches.length, 0)
  win.tick(win.nextTimer())
  assert.equal(win.fetches.length, 1)
  const [request] = win.fetches
  assert.equal(request.url, 'https://rt.example/v1/batch')
  assert.equal(request.init.method, 'POST')
  assert.equal(request.init.keepalive, true)
  assert.equal(typeof request.init.body, 'string') // text/plain: no preflight
  assert.equal(request.init.headers, undefined)
  assert.equal(request.body.writeKey, 'pk_test')
  assert.equal(request.body.batch[0].event, 'A')
  win.rt('track', 'Meanwhile') // not sent twice while the POST is out
  win.tick(20)
  assert.equal(win.fetches.length, 1)
  request.respond(200)
  return Promise.resolve().then(() => {
    assert.equal(win.stats().acked, 2) // with the page view
    assert.equal(win.stats().posts, 1)
  })
})

test('the HTTP fallback retries on network errors, 429 and 5xx, and drops other 4xx', async (t) => {
  const { win } = setup(t)
  const settle = () => new Promise((resolve) => setImmediate(resolve))
  blockWebSockets(win)
  win.tick(win.nextTimer())
  win.fetches[0].respond(0) // network error
  await settle()
  assert.equal(win.stats().queued, 1)
  win.tick(win.nextTimer())
  win.socket.die()
  win.fetches[1].respond(503)
  await settle()
  assert.equal(win.stats().queued, 1)
  win.tick(win.nextTimer())
  win.socket.die()
  win.fetches[2].respond(429) // over the address's budget: kept, sent again later
  await settle()
  assert.equal(win.stats().queued, 1)
  win.tick(win.nextTimer())
  win.socket.die()
  win.fetches[3].respond(403)
  await settle()
  assert.equal(win.stats().queued, 0)
  assert.equal(win.stats().rejected, 1)
})

test('pagehide hands every unacked event to sendBeacon, and they stay queued', (t) => {
  const { browser, win } = setup(t)
  win.rt('track', 'Checkout Started')
  win.tick(20)
  win.rt('track', 'Just Now') // not even sent yet
  win.dispatch('pagehide')
  assert.equal(win.beacons.length, 1)
  const [beacon] = win.beacons
  assert.equal(beacon.url, 'https://rt.example/v1/batch')
  assert.equal(beacon.body.writeKey, 'pk_test')
  assert.deepEqual(
    beacon.body.batch.map((e) => e.event),
    ['Checkout Started', 'Just Now'],
  )
  assert.equal(stored(browser).length, 2)
  assert.equal(win.stats().beacons, 1)
})

test('hiding the page beacons too; a refused beacon falls back to a keepalive fetch', (t) => {
  const { win } = setup(t)
  win.rt('track', 'A')
  win.beaconAccepts = false
  win.document.visibilityState = 'hidden'
  win.dispatch('visibilitychange', 'document')
  assert.equal(win.beacons.length, 1)
  assert.equal(win.fetches.length, 1)
  assert.equal(win.fetches[0].init.keepalive, true)
  assert.equal(win.fetches[0].body.batch[0].event, 'A')
  win.fetches[0].respond(0) // its outcome does not matter: the events are still queued
  assert.equal(win.stats().queued, 1)
})

test('nothing to beacon when everything is acked', (t) => {
  const { win } = setup(t)
  win.dispatch('pagehide')
  assert.equal(win.beacons.length, 0)
})

test('unacked events survive to the next page, which sends them first', (t) => {
  const { browser, win } = setup(t)
  win.rt('track', 'Product Added')
  win.tick(20)
  const sent = win.socket.sent
  const next = browser.open('https://shop.example/cart')
  next.load()
  next.socket.accept()
  next.tick(20)
  assert.deepEqual(next.socket.sent.slice(0, 1), sent)
  assert.equal(next.socket.frames[0].batch[1].type, 'page')
})

test('the offline queue keeps the newest 250 events', (t) => {
  const { browser, win } = setup(t)
  win.socket.die()
  for (let i = 0; i < 300; i++) win.rt('track', 'Offline', { i })
  const kept = stored(browser)
  assert.equal(kept.length, 250)
  assert.equal(kept[0].properties.i, 50)
  assert.equal(win.stats().dropped, 50)
})

test('an event too big for any batch is dropped at once', (t) => {
  const { win } = setup(t)
  win.rt('track', 'Huge', { blob: 'x'.repeat(30000) })
  assert.equal(win.stats().queued, 0)
  assert.equal(win.stats().dropped, 1)
})

test('a socket with no reply for 10 s is dropped and its events resent', (t) => {
  const { win } = setup(t)
  win.rt('track', 'A')
  win.tick(20)
  const first = win.socket
  win.tick(9999)
  assert.ok(!first.closed)
  win.tick(1)
  assert.ok(first.closed)
  win.tick(win.nextTimer())
  win.socket.accept()
  assert.deepEqual(win.socket.sent, first.sent)
  assert.equal(win.stats().fails || 0, 0) // it had opened: not a failed connection
})

test('an open socket with nothing in flight is not timed out', (t) => {
  const { win } = setup(t)
  win.rt('track', 'A')
  win.tick(20)
  win.tick(5000)
  win.socket.ackAll()
  win.tick(60000)
  assert.equal(win.sockets.length, 1)
  assert.ok(!win.socket.closed)
})

test('a handshake that never completes is given up after 10 s', (t) => {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const win = browser.open(PAGE)
  win.load()
  win.tick(10000)
  assert.ok(win.sockets[0].closed)
  assert.equal(win.stats().fails, 1)
})

test('acks arriving on a socket already dropped still count', (t) => {
  const { win } = setup(t)
  win.rt('track', 'A')
  win.tick(20)
  const old = win.socket
  old.die()
  old.reply({ ack: old.sent })
  assert.equal(win.stats().queued, 0)
})
