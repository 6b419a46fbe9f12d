import assert from 'node:assert/strict'
import { webcrypto } from 'node:crypto'
import { test } from 'node:test'

import { backoff, eventName, object, parse, storage, take, uuid } from '../src/util.js'
import { FakeStorage } from './fake-window.js'

test('uuid uses crypto.randomUUID when there is one', () => {
  assert.equal(uuid({ randomUUID: () => 'from-randomUUID' }), 'from-randomUUID')
})

test('uuid falls back to 128 random bits from getRandomValues', () => {
  const crypto = { getRandomValues: (array) => array.fill(0xdeadbeef) }
  assert.equal(uuid(crypto), '3735928559-3735928559-3735928559-3735928559')
  const random = { getRandomValues: (array) => webcrypto.getRandomValues(array) }
  assert.equal(new Set(Array.from({ length: 100 }, () => uuid(random))).size, 100)
})

test('backoff is 1 s * 2^n +- 50%, capped at 60 s', (t) => {
  t.mock.method(Math, 'random', () => 0)
  assert.deepEqual([0, 1, 2, 3].map(backoff), [500, 1000, 2000, 4000])
  t.mock.method(Math, 'random', () => 0.999999)
  assert.ok(Math.abs(backoff(0) - 1500) < 1)
  assert.ok(Math.abs(backoff(2) - 6000) < 1)
  assert.equal(backoff(6), 60000)
  assert.equal(backoff(1000), 60000)
})

test('storage reads, writes and removes, and never throws', () => {
  const win = { localStorage: new FakeStorage() }
  const local = storage(win, 'localStorage')
  assert.equal(local('k'), null)
  local('k', 'v')
  assert.equal(local('k'), 'v')
  local('k', null)
  assert.equal(local('k'), null)
  const broken = storage({ localStorage: new FakeStorage(true) }, 'localStorage')
  assert.equal(broken('k'), undefined)
  broken('k', 'v')
  broken('k', null)
  const missing = storage({}, 'localStorage')
  assert.equal(missing('k'), undefined)
})

test('parse and object fall back on bad input', () => {
  assert.deepEqual(parse('[1]', []), [1])
  assert.deepEqual(parse('not json', []), [])
  assert.deepEqual(parse(null, {}), {})
  assert.deepEqual(object({ a: 1 }), { a: 1 })
  assert.deepEqual(object('text'), {})
  assert.deepEqual(object(null), {})
})

test('take skips events in flight and caps a batch by count and size', () => {
  const record = (i, s, size = 10) => ({ e: { messageId: 'm' + i, pad: 'x'.repeat(size) }, s })
  const queue = [record(0, 1), record(1), record(2)]
  assert.deepEqual(
    take(queue).map((q) => q.e.messageId),
    ['m1', 'm2'],
  )
  assert.equal(take(queue, 1).length, 3)
  const many = Array.from({ length: 120 }, (_, i) => record(i))
  assert.equal(take(many).length, 50)
  const big = Array.from({ length: 5 }, (_, i) => record(i, 0, 9000))
  assert.equal(take(big).length, 2)
  assert.equal(take([record(0, 0, 50000)]).length, 1) // the first always goes
})

test('helpers map to Segment e-commerce names', () => {
  assert.equal(eventName('productViewed'), 'Product Viewed')
  assert.equal(eventName('productsSearched'), 'Products Searched')
  assert.equal(eventName('signedUp'), 'Signed Up')
})
