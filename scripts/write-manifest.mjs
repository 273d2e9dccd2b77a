// Writes oclif.manifest.json after a build, so that starting `cs` reads one
// JSON file instead of importing every command module (and all their
// dependencies) to learn their flags. bin/dev.js ignores it.
import { rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Config } from '@oclif/core';

const root = fileURLToPath(new URL('..', import.meta.url));
const target = new URL('../oclif.manifest.json', import.meta.url);
// oclif reads an existing manifest even when asked not to; start from none.
rmSync(target, { force: true });
const config = await Config.load({ root, ignoreManifest: true });
const manifest = config.rootPlugin?.manifest;
if (!manifest || Object.keys(manifest.commands).length === 0) {
  console.error('write-manifest: no commands found; is dist/ built?');
  process.exit(1);
}
writeFileSync(target, `${JSON.stringify(manifest)}\n`);
console.error(`write-manifest: ${Object.keys(manifest.commands).length} commands`);
