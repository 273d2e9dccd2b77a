#!/usr/bin/env node
// The bundled command line (see scripts/bundle.mjs).
import { execute } from '../dist/bundle/run.js';

await execute({ dir: import.meta.url });
