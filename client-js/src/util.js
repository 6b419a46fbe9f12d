// Small helpers: ids, backoff, storage that never throws.

/**
 * A random id: crypto.randomUUID where there is one (secure contexts: https and localhost), else
 * 128 bits from crypto.getRandomValues (every browser since 2014). The server only needs an
 * opaque, unique string.
 */
export const uuid = (crypto) =>
  crypto.randomUUID ? crypto.randomUUID() : crypto.getRandomValues(new Uint32Array(4)).join('-')

/** Reconnect and retry delay after `n` failures in a row: 1 s · 2^n ± 50%, at most 60 s. */
export const backoff = (n) => Math.min(60000, 1000 * 2 ** Math.min(n, 9) * (0.5 + Math.random()))

/**
 * A reader and writer of `win[area]` (localStorage or sessionStorage): `(key)` reads, `(key,
 * value)` writes, `(key, null)` removes. Storage can throw anywhere (cookies disabled, private
 * modes, a full quota): a failed read is undefined, a failed write is skipped.
 */
export const storage = (win, area) => (key, value) => {
  try {
    const store = win[area]
    if (value === undefined) return store.getItem(key)
    if (value === null) store.removeItem(key)
    else store.setItem(key, value)
  } catch (e) {
    // unavailable: the snippet works in memory
  }
}

/** `JSON.parse(text)`, or `fallback` for anything unreadable (or null). */
export function parse(text, fallback) {
  try {
    return JSON.parse(text) || fallback
  } catch (e) {
    return fallback
  }
}

/** `value` if it is an object, else a new empty one (the server rejects the rest). */
export const object = (value) => (value && typeof value == 'object' ? value : {})

export const MAX_BATCH = 50
// Characters, not bytes: at most 3 bytes each in UTF-8, so a batch stays under the server's
// 64 KiB frame limit and the browsers' 64 KiB budget for keepalive fetches and beacons.
export const MAX_BATCH_CHARS = 20000

/**
 * The next batch of `queue` ({e: event, s: carrier} records, oldest first): the oldest records
 * not in flight (every one when `all`), at most MAX_BATCH, and past the first at most
 * MAX_BATCH_CHARS of JSON in all.
 */
export function take(queue, all) {
  const batch = []
  let chars = 0
  for (const q of queue) {
    if (q.s && !all) continue
    chars += JSON.stringify(q.e).length
    if (batch[0] && (batch.length >= MAX_BATCH || chars > MAX_BATCH_CHARS)) break
    batch.push(q)
  }
  return batch
}

/** The Segment event name of a helper: productViewed -> "Product Viewed". */
export const eventName = (helper) => helper.replace(/[A-Z]/g, ' $&').replace(/^./, (c) => c.toUpperCase())
