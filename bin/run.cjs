#!/usr/bin/env node
// The bundled command line (see scripts/bundle.mjs). The commands people
// repeat most start without oclif when their command line is a plain one:
// dist/bundle/lean-WORDS.cjs is asked first (src/commands/_lean.ts).
// Everything else, and anything it leaves, is oclif's.
//
// CommonJS on purpose: an ES module entry starts Node's module loader, about
// 13 ms of a warm `cs rootfs assemble` that takes 0.2 s; oclif's bundle is an
// ES module and is imported only when it is needed.
'use strict';
const { existsSync } = require('node:fs');
const { join } = require('node:path');
const { pathToFileURL } = require('node:url');

async function main() {
  const words = process.argv.slice(2);
  const lean = [1, 2]
    .filter((n) => words.length >= n && words.slice(0, n).every((w) => /^[a-z]+$/.test(w)))
    .map((n) => join(__dirname, '..', 'dist', 'bundle', `lean-${words.slice(0, n).join('-')}.cjs`))
    .find((path) => existsSync(path));
  const done = lean ? await require(lean).run(words) : false;
  if (!done) {
    const { execute } = await import(pathToFileURL(join(__dirname, '..', 'dist', 'bundle', 'run.js')).href);
    await execute({ dir: pathToFileURL(__filename).href });
  }
}

main().catch((error) => {
  // What the commands do not report themselves (they all do): never a silent failure.
  process.stderr.write(`cs: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
