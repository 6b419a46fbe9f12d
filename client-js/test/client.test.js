// The rt(...) API: stub replay, configuration, event shape, identity, consent, page views and
// the implicit signals, on a fake window.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { HELPERS, install } from '../src/client.js'
import { Browser, stubWith } from './fake-window.js'

const SHOP = 'https://shop.example/products/42?utm_source=news&utm_medium=email&utm_campaign=spring'

/** A browser whose clock drives Date.now, and a page of it with the snippet loaded. */
function setup(t, href = SHOP, options = {}) {
  const browser = new Browser(options.browser)
  t.mock.method(Date, 'now', () => browser.now)
  const win = browser.open(href, options)
  win.load()
  return { browser, win }
}

test('the stub queue is replayed in order after an automatic page view', (t) => {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const stub = stubWith(['track', 'Early', { n: 1 }], ['productAdded', { product_id: 'p1' }])
  const win = browser.open(SHOP, { stub })
  const rt = win.load()
  assert.equal(win.rt, rt)
  assert.notEqual(rt, stub)
  win.tick(20)
  win.socket.accept()
  const names = win.socket.frames[0].batch.map((e) => e.event || e.type)
  assert.deepEqual(names, ['page', 'Early', 'Product Added'])
  assert.equal(win.socket.url, 'wss://rt.example/v1/ws?key=pk_test')
})

test('init() calls queued by the stub configure before anything is sent', (t) => {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const stub = stubWith(['track', 'Early'], ['init', { key: 'pk_init', host: 'http://rt.test:8000/' }])
  const win = browser.open(SHOP, { stub, key: null, src: '' })
  win.load()
  win.tick(20)
  assert.equal(win.socket.url, 'ws://rt.test:8000/v1/ws?key=pk_init')
})

test('without a key nothing is sent until init() gives one', (t) => {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const win = browser.open(SHOP, { key: null })
  const rt = win.load()
  rt('track', 'Waiting')
  win.tick(1000)
  assert.equal(win.sockets.length, 0)
  rt('init', { key: 'pk_late' })
  win.socket.accept()
  assert.deepEqual(
    win.socket.frames[0].batch.map((e) => e.event || e.type),
    ['page', 'Waiting'],
  )
})

test('events are Segment messages with ids, page context and the landing campaign', (t) => {
  const { win } = setup(t)
  win.rt('track', 'Product Viewed', { product_id: 'p42', price: 12.5 })
  win.tick(20)
  win.socket.accept()
  const [page, track] = win.socket.frames[0].batch
  assert.equal(page.type, 'page')
  assert.equal(page.properties.path, '/products/42')
  assert.equal(page.properties.referrer, 'https://search.example/?q=shoes')
  assert.equal(track.type, 'track')
  assert.equal(track.event, 'Product Viewed')
  assert.deepEqual(track.properties, { product_id: 'p42', price: 12.5 })
  assert.match(track.messageId, /^[0-9a-f-]{36}$/)
  assert.notEqual(track.messageId, page.messageId)
  assert.equal(track.anonymousId, page.anonymousId)
  assert.ok(!Number.isNaN(Date.parse(track.timestamp)))
  const context = track.context
  assert.deepEqual(context.library, { name: 'rt.js', version: '0.1.0' })
  assert.equal(context.page.url, SHOP)
  assert.equal(context.page.referrer, 'https://search.example/?q=shoes')
  assert.deepEqual(context.campaign, { source: 'news', medium: 'email', name: 'spring' })
  assert.equal(context.locale, 'en-GB')
  assert.equal(typeof context.timezone, 'string')
  assert.equal(context.referrer, undefined) // opt-in only
})

test('the anonymousId is a first-party cookie and in localStorage, kept across pages', (t) => {
  const { browser, win } = setup(t)
  const id = win.stats().anonymousId
  assert.equal(browser.cookies.get('rt_aid'), id)
  assert.equal(browser.localStorage.getItem('rt_aid'), id)
  const next = browser.open('https://shop.example/cart')
  next.load()
  assert.equal(next.stats().anonymousId, id)
  browser.cookies.clear() // either copy is enough
  const third = browser.open('https://shop.example/')
  third.load()
  assert.equal(third.stats().anonymousId, id)
})

test('the campaign of the landing page stays with the tab', (t) => {
  const { browser } = setup(t)
  const next = browser.open('https://shop.example/cart')
  next.load()
  next.tick(20)
  next.socket.accept()
  const page = next.socket.frames[0].batch.find((e) => e.properties.path == '/cart')
  assert.deepEqual(page.context.campaign, { source: 'news', medium: 'email', name: 'spring' })
})

test('identify carries the hashes in context; later events carry the userId', (t) => {
  const { browser, win } = setup(t)
  win.rt('identify', 'u-7', { email: 'a@example.com' }, { userHash: 'uh', emailHash: 'eh' })
  win.rt('track', 'Signed In')
  win.tick(20)
  win.socket.accept()
  const [, identify, track] = win.socket.frames[0].batch
  assert.equal(identify.type, 'identify')
  assert.equal(identify.userId, 'u-7')
  assert.deepEqual(identify.traits, { email: 'a@example.com' })
  assert.equal(identify.context.userHash, 'uh')
  assert.equal(identify.context.emailHash, 'eh')
  assert.equal(track.userId, 'u-7')
  assert.equal(track.context.userHash, undefined)
  const next = browser.open('https://shop.example/')
  next.load()
  assert.equal(next.stats().userId, 'u-7')
})

test('identify without a userId sends traits for the current identity', (t) => {
  const { win } = setup(t)
  win.rt('identify', null, { first_name: 'Ada' })
  win.tick(20)
  win.socket.accept()
  const identify = win.socket.frames[0].batch[1]
  assert.equal(identify.userId, undefined)
  assert.deepEqual(identify.traits, { first_name: 'Ada' })
})

test('alias names the own anonymousId as previousId, with the userHash', (t) => {
  const { win } = setup(t)
  const anonymousId = win.stats().anonymousId
  win.rt('alias', 'u-9', { userHash: 'h9' })
  win.tick(20)
  win.socket.accept()
  const alias = win.socket.frames[0].batch[1]
  assert.equal(alias.type, 'alias')
  assert.equal(alias.userId, 'u-9')
  assert.equal(alias.previousId, anonymousId)
  assert.equal(alias.anonymousId, anonymousId)
  assert.equal(alias.context.userHash, 'h9')
})

test('reset forgets the user and starts a new anonymous identity', (t) => {
  const { browser, win } = setup(t)
  const before = win.stats().anonymousId
  win.rt('identify', 'u-1')
  win.rt('reset')
  const after = win.stats()
  assert.notEqual(after.anonymousId, before)
  assert.equal(after.userId, null)
  assert.equal(browser.cookies.get('rt_aid'), after.anonymousId)
  assert.equal(browser.localStorage.getItem('rt_uid'), null)
  win.rt('track', 'After Logout')
  win.tick(20)
  win.socket.accept()
  const last = win.socket.frames[0].batch.at(-1)
  assert.equal(last.anonymousId, after.anonymousId)
  assert.equal(last.userId, undefined)
})

test('each e-commerce helper tracks its Segment event name', (t) => {
  const { win } = setup(t)
  for (const helper of HELPERS) win.rt(helper, { via: helper })
  win.tick(20)
  win.socket.accept()
  const tracked = win.socket.frames[0].batch.slice(1).map((e) => [e.event, e.properties.via])
  assert.deepEqual(tracked, [
    ['Product Viewed', 'productViewed'],
    ['Product Added', 'productAdded'],
    ['Product Removed', 'productRemoved'],
    ['Cart Viewed', 'cartViewed'],
    ['Checkout Started', 'checkoutStarted'],
    ['Order Completed', 'orderCompleted'],
    ['Products Searched', 'productsSearched'],
    ['Signed Up', 'signedUp'],
  ])
})

test('history navigation makes page views; same path or only the hash does not', (t) => {
  const { win } = setup(t)
  win.history.pushState({}, '', '/cart')
  win.history.replaceState({ step: 2 }, '', '/cart') // same page
  win.history.pushState({}, '', '/cart#summary') // only the hash
  win.setURL('https://shop.example/products/42') // the back button
  win.dispatch('popstate')
  win.tick(20)
  win.socket.accept()
  const pages = win.socket.frames[0].batch.filter((e) => e.type == 'page')
  assert.deepEqual(
    pages.map((p) => [p.properties.path, p.properties.referrer]),
    [
      ['/products/42', 'https://search.example/?q=shoes'],
      ['/cart', SHOP],
      ['/products/42', 'https://shop.example/cart'], // the last page view's URL
    ],
  )
})

test('with data-auto-page="false" only explicit page() calls make page views', (t) => {
  const { win } = setup(t, SHOP, { data: { autoPage: 'false' } })
  win.history.pushState({}, '', '/cart')
  win.rt('page', { section: 'cart' })
  win.tick(20)
  win.socket.accept()
  const pages = win.socket.frames[0].batch
  assert.equal(pages.length, 1)
  assert.equal(pages[0].properties.section, 'cart')
  assert.equal(pages[0].properties.path, '/cart')
})

test('time on page counts visible time, reported when the page view ends', (t) => {
  const { win } = setup(t, SHOP, { data: { timeOnPage: '' } })
  win.tick(4000)
  win.document.visibilityState = 'hidden'
  win.dispatch('visibilitychange', 'document')
  win.tick(60000) // hidden: not counted
  win.document.visibilityState = 'visible'
  win.dispatch('visibilitychange', 'document')
  win.tick(3000)
  win.history.pushState({}, '', '/cart')
  win.tick(2000)
  win.dispatch('pagehide')
  const spent = win.beacons
    .at(-1)
    .body.batch.filter((e) => e.event == 'Time On Page')
    .map((e) => [e.properties.url, e.properties.seconds])
  assert.deepEqual(spent, [
    [SHOP, 7],
    ['https://shop.example/cart', 2],
  ])
})

test('time on page is off by default', (t) => {
  const { win } = setup(t)
  win.tick(5000)
  win.dispatch('pagehide')
  assert.ok(!win.beacons[0].body.batch.some((e) => e.event == 'Time On Page'))
})

test('scroll depth reports each quarter once per page view', (t) => {
  const { win } = setup(t, SHOP, { data: { scrollDepth: 'true' } })
  win.scrollY = 300 // (300 + 800) / 4000: 27%
  win.dispatch('scroll')
  win.dispatch('scroll')
  win.scrollY = 3200 // to the bottom
  win.dispatch('scroll')
  win.history.pushState({}, '', '/next')
  win.scrollY = 0
  win.dispatch('scroll') // 20% of the new page: nothing yet
  win.scrollY = 1300
  win.dispatch('scroll')
  win.tick(20)
  win.socket.accept()
  const depths = win.socket.frames[0].batch
    .filter((e) => e.event == 'Scroll Depth Reached')
    .map((e) => [new URL(e.properties.url).pathname, e.properties.percent])
  assert.deepEqual(depths, [
    ['/products/42', 25],
    ['/products/42', 50],
    ['/products/42', 75],
    ['/products/42', 100],
    ['/next', 25],
    ['/next', 50],
  ])
})

test('the referrer signal keeps the landing referrer for the whole tab', (t) => {
  const { browser } = setup(t, SHOP, { data: { referrer: '' } })
  const next = browser.open('https://shop.example/cart', { data: { referrer: '' } })
  next.document.referrer = SHOP
  next.load()
  next.tick(20)
  next.socket.accept()
  const page = next.socket.frames[0].batch.find((e) => e.properties.path == '/cart')
  assert.deepEqual(page.context.referrer, { url: 'https://search.example/?q=shoes' })
  assert.equal(page.context.page.referrer, SHOP)
})

test('in consent mode nothing is sent or stored before consent', (t) => {
  const { browser, win } = setup(t, SHOP, { data: { consent: '' } })
  win.rt('track', 'Before Consent')
  win.tick(5000)
  win.dispatch('pagehide')
  assert.equal(win.sockets.length, 0)
  assert.equal(win.beacons.length + win.fetches.length, 0)
  assert.equal(browser.localStorage.items.size, 0)
  assert.equal(browser.sessionStorage.items.size, 0)
  assert.equal(browser.cookies.size, 0)
  win.rt('consent', true)
  win.socket.accept()
  assert.deepEqual(
    win.socket.frames[0].batch.map((e) => e.event || e.type),
    ['page', 'Before Consent'],
  )
  assert.equal(browser.cookies.get('rt_aid'), win.stats().anonymousId)
  assert.equal(browser.localStorage.getItem('rt_c'), '1')
  // The next page remembers the choice.
  const next = browser.open('https://shop.example/cart', { data: { consent: '' } })
  next.load()
  assert.equal(next.sockets.length, 1)
})

test('withdrawing consent stops, clears storage and forgets the identity', (t) => {
  const { browser, win } = setup(t)
  const before = win.stats().anonymousId
  win.socket.accept()
  win.rt('identify', 'u-1')
  win.rt('consent', false)
  assert.ok(win.socket.closed)
  assert.equal(win.stats().queued, 0)
  assert.notEqual(win.stats().anonymousId, before)
  assert.deepEqual([...browser.localStorage.items.keys()], ['rt_c'])
  assert.equal(browser.localStorage.getItem('rt_c'), '0')
  assert.equal(browser.sessionStorage.items.size, 0)
  assert.equal(browser.cookies.size, 0)
  win.rt('track', 'After Withdrawal')
  win.tick(120000)
  win.dispatch('pagehide')
  assert.equal(win.sockets.length, 1)
  assert.equal(win.beacons.length, 0)
  // A later page, even without data-consent, keeps to the visitor's choice.
  const next = browser.open('https://shop.example/')
  next.load()
  next.tick(20)
  assert.equal(next.sockets.length, 0)
})

test('the snippet never throws into the page and counts its errors', (t) => {
  const { win } = setup(t, SHOP, { browser: { broken: true } })
  assert.equal(win.rt('no such command'), undefined)
  assert.equal(win.rt('track', 'Works Anyway'), undefined)
  win.tick(20)
  win.socket.accept()
  assert.equal(win.socket.frames[0].batch.length, 2)
  assert.equal(win.stats().errors, 1)
  win.WebSocket = function () {
    throw new Error('blocked by CSP')
  }
  win.socket.die()
  win.rt('track', 'Over HTTP')
  win.tick(60000)
  assert.ok(win.fetches.length >= 1)
})

test('a script tag without data attributes and a page without document.currentScript work', (t) => {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const win = browser.open(SHOP)
  win.document.currentScript = null
  const rt = win.load()
  rt('track', 'No Key Yet')
  assert.equal(win.stats().queued, 2)
  assert.equal(win.stats().errors, 1) // the missing script tag, counted
})

test('the snippet adds no global but rt, and a second copy keeps the first', (t) => {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const win = browser.open(SHOP)
  const before = new Set(Object.keys(win))
  const rt = win.load()
  const added = Object.keys(win).filter((k) => !before.has(k))
  assert.deepEqual(added, ['rt'])
  assert.equal(install(win), rt)
})
