#!/usr/bin/env -S node --import tsx --disable-warning=ExperimentalWarning
// Runs the TypeScript sources directly (no build step) for development.
import { execute } from '@oclif/core';

await execute({ development: true, dir: import.meta.url, loadOptions: { root: new URL('..', import.meta.url).pathname, ignoreManifest: true } });
