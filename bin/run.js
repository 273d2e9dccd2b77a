#!/usr/bin/env node
// The bundled command line (see scripts/bundle.mjs). The commands people
// repeat most start without oclif when their command line is a plain one
// (src/commands/_lean.ts); everything else is oclif's.
import { runLean } from '../dist/bundle/lean.js';

if (!(await runLean(process.argv.slice(2)))) {
  const { execute } = await import('../dist/bundle/run.js');
  await execute({ dir: import.meta.url });
}
