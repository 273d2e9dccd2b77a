#!/usr/bin/env -S node --import tsx --disable-warning=ExperimentalWarning
// Runs the TypeScript sources directly (no build step) for development: the
// commands are found by file name under src/commands instead of in the
// bundle that `npm run build` makes.
import { readFileSync } from 'node:fs';
import { execute } from '@oclif/core';

const root = new URL('..', import.meta.url).pathname;
const pjson = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
pjson.oclif.commands = { strategy: 'pattern', target: './dist/commands', globPatterns: ['**/*.+(js|ts)', '!**/*.+(d.ts|test.ts|test.js)', '!**/_*'] };
await execute({ development: true, dir: import.meta.url, loadOptions: { root, pjson, ignoreManifest: true } });
