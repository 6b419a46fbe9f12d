// Build rt.js: one minified IIFE, ES2017, 'use strict' inside it (not at the top of the file,
// where it would change any code concatenated after it). `node build.js [OUTFILE]`; the default
// is the file the Python package serves, rtserver/static/rt.js.

import { build } from 'esbuild'
import { fileURLToPath } from 'node:url'

const here = (path) => fileURLToPath(new URL(path, import.meta.url))

await build({
  entryPoints: [here('src/index.js')],
  outfile: process.argv[2] || here('../rtserver/static/rt.js'),
  bundle: true,
  minify: true,
  format: 'esm', // no exports: the banner and footer below make it an IIFE
  banner: { js: '(()=>{"use strict";' },
  footer: { js: '})();' },
  target: 'es2017',
  charset: 'utf8',
  legalComments: 'none',
  logLevel: 'warning',
})
