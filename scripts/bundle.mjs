// Bundles the built command line for a fast start: every command under
// dist/commands becomes an entry point of one esbuild build with code
// splitting, written to dist/bundle/commands/ beside shared chunks
// (dist/bundle/chunk-*.js) that hold @oclif/core and the code commands share.
//
// Why: starting `cs` loaded about 200 modules one by one (oclif's CommonJS
// files and cs's own ES modules); resolving, reading and wrapping each cost
// more than running them. A command now loads a few files. One file for the
// whole command line was tried and was slower: every command's dependencies
// (the MCP SDK, zod, ajv...) were evaluated on every start.
//
// bin/run.cjs takes `execute` from dist/bundle/run.js, an entry of the same
// build, so the commands and the oclif that runs them are one copy. Before
// that it asks dist/bundle/lean-WORDS.cjs (commands/_lean.ts), which runs the
// commands people repeat most without loading oclif at all. The
// unbundled dist/ stays: the workspace supervisor and the tests import it.
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const pjson = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const commandsDir = join(root, 'dist', 'commands');

/** Command modules as oclif's pattern discovery finds them: no helpers (`_*`), no tests, no maps. */
function commandFiles(dir) {
  const found = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('_')) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...commandFiles(path));
    else if (entry.name.endsWith('.js') && !entry.name.endsWith('.test.js')) found.push(path);
  }
  return found.sort();
}

const files = commandFiles(commandsDir);
if (files.length === 0) {
  console.error('bundle: no commands in dist/commands; run tsc first');
  process.exit(1);
}
const outdir = join(root, 'dist', 'bundle');
rmSync(outdir, { recursive: true, force: true });
const runEntry = join(root, 'dist', '.bundle-run.mjs');
/** Commands started without oclif (see src/commands/_lean.ts). */
const HOT = ['_exec.js', 'image/_pull.js', 'rootfs/_assemble.js'];
const leanEntries = [];
writeFileSync(runEntry, "export { execute } from '@oclif/core';\n");
try {
  await build({
    entryPoints: [...files.map((file) => ({ in: file, out: join('commands', relative(commandsDir, file).slice(0, -'.js'.length)) })), { in: runEntry, out: 'run' }],
    outdir,
    bundle: true,
    splitting: true,
    chunkNames: 'chunk-[hash]',
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // Only oclif (and what it needs) is bundled with cs's code: that is where the ~200 small
    // modules were. cs's other dependencies stay ordinary packages, loaded as they are unbundled:
    // layers/pax.ts patches tar-stream's own module, which a bundled copy would not see.
    // oclif's development mode loads TypeScript on demand; the bundle never runs it.
    external: [...Object.keys(pjson.dependencies).filter((name) => name !== '@oclif/core'), 'typescript', 'ts-node'],
    // CommonJS dependencies inside an ES module still call require() and read __dirname.
    banner: {
      js: [
        "import { createRequire as __csCreateRequire } from 'node:module';",
        "import { dirname as __csDirname } from 'node:path';",
        "import { fileURLToPath as __csFileUrlToPath } from 'node:url';",
        'const require = __csCreateRequire(import.meta.url);',
        'const __filename = __csFileUrlToPath(import.meta.url);',
        'const __dirname = __csDirname(__filename);',
      ].join('\n'),
    },
    legalComments: 'none',
    logLevel: 'warning',
  });
  // The lean start (commands/_lean.ts): for each command that exports `hot`, one CommonJS file
  // with just the code that command reaches, dist/bundle/lean-WORDS.cjs. One file loads faster
  // than the same code as ES module chunks (50-60 ms of a 0.25 s start), and CommonJS keeps
  // every module's body, and its require() of a package, lazy until the command needs it (an ES
  // module bundle would import every package it names, yaml, ajv..., at the start). One file per
  // command: V8 reads all of a file it loads, and `cs exec` reaches execa, a pull does not.
  for (const file of HOT) {
    const { hot } = await import(pathToFileURL(join(commandsDir, file)).href);
    const entry = join(root, 'dist', `.bundle-lean-${hot.words.join('-')}.mjs`);
    writeFileSync(entry, `import { runLean } from './commands/_lean.js';\nimport { hot } from './commands/${file}';\nexport const run = (words) => runLean(hot, words);\n`);
    leanEntries.push(entry);
    await build({
      entryPoints: [entry],
      outfile: join(outdir, `lean-${hot.words.join('-')}.cjs`),
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node20',
      // Packages that can be require()d stay packages (tar-stream must: layers/pax.ts patches it).
      // execa is an ES module only, which Node 20 cannot require(); cs imports it only dynamically
      // (util/process.ts), which a CommonJS file can do, so it stays a package too, except for
      // `cs exec`, which always runs it and loads it faster bundled. Elsewhere it was a third of
      // the file, parsed on every start.
      external: [...Object.keys(pjson.dependencies).filter((name) => name !== 'execa' || hot.words[0] !== 'exec'), 'typescript', 'ts-node'],
      define: { 'import.meta.url': '__csImportMetaUrl' },
      banner: { js: "const __csImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
      legalComments: 'none',
      logLevel: 'warning',
    });
  }
} finally {
  rmSync(runEntry, { force: true });
  for (const entry of leanEntries) rmSync(entry, { force: true });
}
console.error(`bundle: ${files.length} commands in dist/bundle/commands`);
