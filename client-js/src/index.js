// The entry point of rt.js: install the snippet on the page's window.

import { install } from './client.js'

try {
  install(window)
} catch (e) {
  // never throw into the page: the stub keeps queueing
}
