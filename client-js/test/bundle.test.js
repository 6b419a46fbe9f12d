// The built file as a page runs it: the README's tag (stub, then rt.js) in a fresh global
// scope, which must end up with `rt` as its only new global.

import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import vm from 'node:vm'

import { Browser } from './fake-window.js'

const read = (path) => readFileSync(new URL(path, import.meta.url), 'utf8')
const BUNDLE = read('../../rtserver/static/rt.js')
const README = read('../README.md')

/** A fake window as the global object of a fresh context, with the browser's URL classes. */
function pageContext(win) {
  Object.assign(win, { window: win, URL, URLSearchParams })
  return vm.createContext(win)
}

/** The inline stub of the README's install tag. */
function readmeStub() {
  const tag = README.match(/```html\n<script>\n([^<]*)<\/script>\n<script async src=/)
  assert.ok(tag, 'the README shows the install tag')
  return tag[1]
}

test('the bundle is one strict IIFE', () => {
  assert.match(BUNDLE, /^\(\(\)=>\{"use strict";/)
  assert.match(BUNDLE, /\}\)\(\);\n$/)
})

test("the README's tag installs rt as the only global, replaying the stub's queue", (t) => {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const win = browser.open('https://shop.example/')
  const context = pageContext(win)
  vm.runInContext(readmeStub(), context)
  vm.runInContext("rt('productAdded', { product_id: 'p1' })", context)
  assert.equal(win.rt.q.length, 1)
  const before = new Set(Object.keys(win))
  vm.runInContext(BUNDLE, context)
  assert.deepEqual(
    Object.keys(win).filter((k) => !before.has(k)),
    [],
  )
  assert.equal(win.rt.q, undefined) // the stub was replaced
  assert.equal(vm.runInContext("rt('stats').queued", context), 2)
  win.tick(20)
  win.socket.accept()
  assert.deepEqual(
    win.socket.frames[0].batch.map((e) => e.event || e.type),
    ['page', 'Product Added'],
  )
})

test('loading the bundle twice keeps the first copy', (t) => {
  const browser = new Browser()
  t.mock.method(Date, 'now', () => browser.now)
  const win = browser.open('https://shop.example/')
  const context = pageContext(win)
  vm.runInContext(BUNDLE, context)
  const rt = win.rt
  vm.runInContext(BUNDLE, context)
  assert.equal(win.rt, rt)
  assert.equal(win.sockets.length, 1)
})
