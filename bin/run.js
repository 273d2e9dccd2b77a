#!/usr/bin/env node
// The bundled command line (see scripts/bundle.mjs). The commands people
// repeat most start without oclif when their command line is a plain one:
// dist/bundle/lean-WORDS.cjs is asked first (src/commands/_lean.ts).
// Everything else, and anything it leaves, is oclif's.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const words = process.argv.slice(2);
const lean = [1, 2]
  .filter((n) => words.length >= n && words.slice(0, n).every((w) => /^[a-z]+$/.test(w)))
  .map((n) => fileURLToPath(new URL(`../dist/bundle/lean-${words.slice(0, n).join('-')}.cjs`, import.meta.url)))
  .find((path) => existsSync(path));
const done = lean ? await createRequire(import.meta.url)(lean).run(words) : false;
if (!done) {
  const { execute } = await import('../dist/bundle/run.js');
  await execute({ dir: import.meta.url });
}
