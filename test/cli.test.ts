/**
 * End-to-end tests of the `cs` binary: each test starts `node bin/run.cjs`
 * the way a user's shell would and checks only what a user sees (exit code,
 * stdout, stderr). Inputs that are not in examples/ are written to a fresh
 * temporary folder.
 */
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin', 'run.cjs');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/**
 * A user's environment: the caller's, minus what changes cs's output (stack
 * traces, colours) and what vitest adds. With NODE_ENV=test (set by vitest)
 * oclif treats the checkout as a development plugin and tries to load
 * src/commands through tsx or ts-node instead of dist, which is not what a
 * user runs (and costs about half a second per start).
 */
const ENV: Record<string, string> = {};
for (const [key, value] of Object.entries(process.env)) {
  if (value === undefined || /^(CS_DEBUG|FORCE_COLOR|NODE_ENV|NODE_OPTIONS|DEBUG|VITEST.*|TSX.*)$/.test(key)) continue;
  ENV[key] = value;
}
ENV['NO_COLOR'] = '1';

interface Run {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

async function cs(args: readonly string[], options: { cwd?: string } = {}): Promise<Run> {
  const result = await execa(process.execPath, [BIN, ...args], {
    cwd: options.cwd ?? ROOT,
    reject: false,
    env: ENV,
    extendEnv: false,
    stdin: 'ignore',
    timeout: 30_000,
  });
  return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr };
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '');
}

/** Exactly one JSON object, nothing before or after it. */
function parseJson(stdout: string): Record<string, unknown> {
  const value: unknown = JSON.parse(stdout);
  expect(typeof value).toBe('object');
  expect(value).not.toBeNull();
  expect(Array.isArray(value)).toBe(false);
  return value as Record<string, unknown>;
}

/** Failures are printed for people, never as a stack trace. */
function expectNoStackTrace(run: Run): void {
  for (const stream of [run.stdout, run.stderr]) {
    expect(stream).not.toMatch(/^\s+at /m);
    expect(stream).not.toMatch(/\.[cm]?[jt]s:\d+/);
    expect(stream).not.toMatch(/Internal error/);
  }
}

/** An invalid run: exit 3, exactly these problem lines then the summary, nothing on stderr. */
function expectProblems(run: Run, problems: readonly string[], summary: string): void {
  expect(run.exitCode, run.stdout + run.stderr).toBe(3);
  expect(lines(run.stdout)).toEqual([...problems, summary]);
  expect(run.stderr).toBe('');
  expectNoStackTrace(run);
}

interface JsonIssue {
  file: string;
  line: number;
  column: number;
  path: string;
  message: string;
}
interface EnvVar {
  name: string;
  value: string;
}
interface WorkspaceModel {
  name: string;
  env: EnvVar[];
  waitFor: string[];
  baseSnapshot?: Record<string, unknown>;
  homeSnapshot?: Record<string, unknown>;
  portForwardRules: { local: { host: string; port: number }; remote: { target: string; port: number; portName?: string } }[];
  resources: { cpus: number; memoryMiB: number; diskBytes: number };
  checkouts: { path: string; historyDepth?: number; versionSpec?: string }[];
  system: { files: { path: string; mode?: number; kind: string }[] };
}
interface SandboxModel {
  name: string;
  env: EnvVar[];
  workspaces: WorkspaceModel[];
}
interface Report {
  ok: boolean;
  files: { file: string; kind: string; ok: boolean; model?: SandboxModel }[];
  issues: JsonIssue[];
}

/** The one model printed by `validate FILE --print-model --json`. */
function modelOf(run: Run, file: string): SandboxModel {
  expect(run.exitCode, run.stderr).toBe(0);
  const report = parseJson(run.stdout) as unknown as Report;
  expect(report.ok).toBe(true);
  expect(report.files).toHaveLength(1);
  const entry = report.files[0];
  expect(entry?.file).toBe(file);
  expect(entry?.kind).toBe('sandbox');
  const model = entry?.model;
  if (model === undefined) throw new Error(`no model printed for ${file}: ${run.stdout}`);
  return model;
}

function workspace(model: SandboxModel, name: string): WorkspaceModel {
  const found = model.workspaces.find((w) => w.name === name);
  if (found === undefined) throw new Error(`no workspace ${name} in ${model.workspaces.map((w) => w.name).join(', ')}`);
  return found;
}

let tmp = '';

beforeAll(async () => {
  if (!existsSync(join(ROOT, 'dist', 'commands', 'validate.js'))) {
    await execa('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  }
  tmp = await mkdtemp(join(tmpdir(), 'cs-cli-test-'));
});

afterAll(async () => {
  if (tmp !== '') await rm(tmp, { recursive: true, force: true });
});

/** Write `content` to a file under the temporary folder and return its path. */
async function fixture(name: string, content: string | Uint8Array): Promise<string> {
  const file = join(tmp, name);
  await mkdir(join(file, '..'), { recursive: true });
  await writeFile(file, content);
  return file;
}

const EXAMPLE_FILES = [
  { file: 'examples/debian.yaml', kind: 'sandbox', ok: true },
  { file: 'examples/minimal.yaml', kind: 'sandbox', ok: true },
  { file: 'examples/team/frontend-repo/.sandbox/manifest.yaml', kind: 'manifest', ok: true },
  { file: 'examples/team/shop.yaml', kind: 'sandbox', ok: true },
  { file: 'examples/webapp.yaml', kind: 'sandbox', ok: true },
];

describe('cs validate on the examples', () => {
  it('accepts every example, for people and as JSON', async () => {
    const [human, json] = await Promise.all([cs(['validate', 'examples/']), cs(['validate', 'examples/', '--json'])]);

    expect(human.exitCode, human.stderr).toBe(0);
    expect(lines(human.stdout).at(-1)).toBe('✓ 5 definitions valid');
    expect(human.stderr).toBe('');

    expect(json.exitCode, json.stderr).toBe(0);
    const report = parseJson(json.stdout);
    expect(report).toEqual({ ok: true, files: EXAMPLE_FILES, issues: [] });
  });

  it('prints the typed model of examples/team/shop.yaml', async () => {
    const run = await cs(['validate', 'examples/team/shop.yaml', '--print-model', '--json']);
    const model = modelOf(run, 'examples/team/shop.yaml');

    expect(model.name).toBe('shop');
    expect(model.workspaces.map((w) => w.name)).toEqual(['db', 'backend', 'frontend']);

    const db = workspace(model, 'db');
    const backend = workspace(model, 'backend');
    const frontend = workspace(model, 'frontend');
    expect(backend.waitFor).toEqual(['db']);
    expect(frontend.waitFor).toEqual(['backend']);
    expect(db.waitFor).toEqual([]);

    // `port: pg` names db's port; the model carries the number it stands for.
    expect(backend.portForwardRules).toEqual([
      { local: { host: '127.0.0.1', port: 5432 }, remote: { target: 'db', port: 5432, portName: 'pg' } },
    ]);
    expect(frontend.portForwardRules).toEqual([
      { local: { host: '127.0.0.1', port: 9000 }, remote: { target: 'backend', port: 9000, portName: 'api' } },
    ]);

    // memory: 1Gi is 1024 MiB; cpus defaults to 1 where not given.
    expect(db.resources.memoryMiB).toBe(1024);
    expect(db.resources.diskBytes).toBe(20 * 1024 ** 3);
    expect(db.resources.cpus).toBe(1);
    expect(frontend.resources.cpus).toBe(1);
    expect(backend.resources).toMatchObject({ cpus: 2, memoryMiB: 2048 });

    // The sandbox's env is in every workspace, before the workspace's own.
    expect(model.env).toEqual([{ name: 'TEAM', value: 'shop' }]);
    for (const w of model.workspaces) expect(w.env).toContainEqual({ name: 'TEAM', value: 'shop' });
    expect(backend.env).toEqual([
      { name: 'TEAM', value: 'shop' },
      { name: 'PGHOST', value: 'localhost' },
    ]);

    // Snapshot references: a catalogue name, an image by tag, an image by digest.
    expect(db.baseSnapshot).toEqual({ kind: 'name', name: 'postgres-15' });
    expect(db.homeSnapshot).toEqual({ kind: 'name', name: 'shop-home' });
    expect(backend.baseSnapshot).toMatchObject({
      kind: 'oci',
      text: 'oci://registry.example.com/shop/backend-base:2024.06',
      reference: { registry: 'registry.example.com', repository: 'shop/backend-base', tag: '2024.06' },
    });
    expect(frontend.baseSnapshot).toMatchObject({
      kind: 'oci',
      reference: {
        registry: 'registry.example.com',
        repository: 'shop/frontend-base',
        digest: 'sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae',
      },
    });
  });

  it('prints the typed model of examples/webapp.yaml and examples/minimal.yaml', async () => {
    const [webappRun, minimalRun] = await Promise.all([
      cs(['validate', 'examples/webapp.yaml', '--print-model', '--json']),
      cs(['validate', 'examples/minimal.yaml', '--print-model', '--json']),
    ]);
    const webapp = modelOf(webappRun, 'examples/webapp.yaml');
    expect(webapp.name).toBe('webapp');
    const api = workspace(webapp, 'api');

    // File modes are octal text in YAML: "0755" is 493, "0644" is 420; a symlink has none.
    expect(api.system.files.map((f) => [f.path, f.kind, f.mode])).toEqual([
      ['/etc/apt/apt.conf.d/99no-recommends', 'content', 0o644],
      ['/etc/profile.d/api.sh', 'template', 0o755],
      ['/usr/local/bin/api-logs', 'symlink', undefined],
    ]);
    expect(api.system.files[1]?.mode).toBe(493);

    expect(api.checkouts).toEqual([
      { path: 'src/api', repo: { git: 'https://github.com/example/api.git' }, versionSpec: 'main', historyDepth: 50 },
    ]);
    expect(api.baseSnapshot).toEqual({ kind: 'name', name: 'node-20-bookworm' });
    expect(api.env.map((e) => e.name)).toEqual(['NODE_ENV', 'LOG_LEVEL', 'DATABASE_URL', 'PORT']);

    // minimal.yaml has no `name:`: the sandbox is named after the file.
    const minimal = modelOf(minimalRun, 'examples/minimal.yaml');
    expect(minimal.name).toBe('minimal');
    const dev = workspace(minimal, 'dev');
    expect(dev.baseSnapshot).toMatchObject({
      kind: 'oci',
      text: 'oci://docker.io/library/debian:bookworm-slim',
      reference: { registry: 'docker.io', repository: 'library/debian', tag: 'bookworm-slim' },
    });
    expect(dev.resources).toEqual({ cpus: 1, memoryMiB: 512, diskBytes: 4 * 1024 ** 3 });
  });

  it('validates the current directory when no path is given', async () => {
    const copy = join(tmp, 'examples-copy');
    await cp(join(ROOT, 'examples'), copy, { recursive: true });
    const json = await cs(['validate', '--json'], { cwd: copy });

    expect(json.exitCode, json.stderr).toBe(0);
    // Paths are relative to the folder cs was started in.
    expect(parseJson(json.stdout)).toEqual({
      ok: true,
      files: EXAMPLE_FILES.map((f) => ({ ...f, file: f.file.replace(/^examples\//, '') })),
      issues: [],
    });
  });
});

describe('cs validate on invalid definitions', () => {
  // Line and column of every problem, counted by hand from this text.
  const SEVERAL = [
    'name: several', //                                      1
    'env:', //                                               2
    '  - TEAM=a', //                                         3
    '  - TEAM=b', //                                         4  env.1 at column 5
    'workspaces:', //                                        5
    '  - name: web', //                                      6
    '    base_snapshot: oci://registry.example.com/Shop/app:v1', // 7  the "S" is column 47
    '    ports:', //                                         8
    '      - name: http', //                                 9
    '        port: 70000', //                                10 value at column 15
    '    resources:', //                                     11
    '      memory: 64Mi', //                                 12 value at column 15
    '    wait_for:', //                                      13
    '      - nowhere', //                                    14 item at column 9
    '    colour: blue', //                                   15 key at column 5
    '  - name: WEB', //                                      16 value at column 11
    '    base_snapshot: debian', //                          17
    '',
  ].join('\n');

  it('reports every problem as FILE:LINE:COL [path]: message, for people and as JSON', async () => {
    const file = await fixture('several/several.yaml', SEVERAL);
    const [human, json] = await Promise.all([cs(['validate', file]), cs(['validate', file, '--json'])]);

    const expected: JsonIssue[] = [
      { file, line: 4, column: 5, path: 'env.1', message: 'environment variable "TEAM" is already set at line 3' },
      {
        file,
        line: 7,
        column: 47,
        path: 'workspaces.0.base_snapshot',
        message: 'invalid image reference: repository name must be lowercase: found "S" in path component "Shop"',
      },
      { file, line: 10, column: 15, path: 'workspaces.0.ports.0.port', message: 'must be from 1 to 65535, not 70000' },
      { file, line: 12, column: 15, path: 'workspaces.0.resources.memory', message: 'memory must be at least 128Mi' },
      {
        file,
        line: 14,
        column: 9,
        path: 'workspaces.0.wait_for.0',
        message: 'no workspace named "nowhere" in this sandbox (workspaces: web)',
      },
      { file, line: 15, column: 5, path: 'workspaces.0.colour', message: 'unknown field "colour"' },
      { file, line: 16, column: 11, path: 'workspaces.1.name', message: 'workspace name "WEB" is already used at line 6' },
    ];

    expectProblems(
      human,
      expected.map((i) => `${i.file}:${i.line}:${i.column} [${i.path}]: ${i.message}`),
      '✗ 7 problems in 1 path (1 file checked)',
    );

    expect(json.exitCode).toBe(3);
    expect(json.stderr).toBe('');
    expectNoStackTrace(json);
    const report = parseJson(json.stdout);
    expect(report['ok']).toBe(false);
    expect(report['files']).toEqual([{ file, kind: 'sandbox', ok: false }]);
    const issues = report['issues'] as JsonIssue[];
    for (const issue of issues) {
      expect(Object.keys(issue).sort()).toEqual(['column', 'file', 'line', 'message', 'path']);
    }
    expect(issues).toEqual(expected);
  });

  it('explains files that are not YAML definitions at all', async () => {
    const [syntax, tab, dupKey, latin1, empty, commentsOnly, emptyDir] = await Promise.all([
      fixture('syntax.yaml', 'name: syntax\nworkspaces:\n  - name: a: b\n'),
      fixture('tab.yaml', 'name: tabby\nworkspaces:\n\t- name: a\n'),
      fixture('dupkey.yaml', 'name: dup\nworkspaces:\n  - name: a\nname: again\n'),
      // "café" in Latin-1: 0xE9 is not UTF-8. Line 3, column 14 (after "  - name: caf").
      fixture('latin1.yaml', Buffer.concat([Buffer.from('name: latin\nworkspaces:\n  - name: caf'), Buffer.from([0xe9, 0x0a])])),
      fixture('empty.yaml', ''),
      fixture('comments.yaml', '# nothing but a comment\n\n'),
      mkdir(join(tmp, 'no-definitions', 'sub'), { recursive: true }).then(async () => {
        await writeFile(join(tmp, 'no-definitions', 'README.md'), '# not a definition\n');
        await writeFile(join(tmp, 'no-definitions', 'sub', 'data.json'), '{}\n');
        return join(tmp, 'no-definitions');
      }),
    ]);
    const missing = join(tmp, 'does-not-exist.yaml');

    const runs = await Promise.all(
      [syntax, tab, dupKey, latin1, empty, commentsOnly, emptyDir, missing].map((path) => cs(['validate', path])),
    );
    const [syntaxRun, tabRun, dupRun, latin1Run, emptyRun, commentsRun, dirRun, missingRun] = runs;
    if (!syntaxRun || !tabRun || !dupRun || !latin1Run || !emptyRun || !commentsRun || !dirRun || !missingRun) {
      throw new Error('a run is missing');
    }

    const oneFile = '✗ 1 problem in 1 path (1 file checked)';
    const noFile = '✗ 1 problem in 1 path (0 files checked)';
    expectProblems(syntaxRun, [`${syntax}:3:11: YAML syntax: nested mappings are not allowed in compact mappings`], oneFile);
    expectProblems(tabRun, [`${tab}:3:1: a tab is used for indentation; YAML indents with spaces only`], oneFile);
    expectProblems(
      dupRun,
      [`${dupKey}:4:1: duplicate key "name" (first set at line 1): each key may appear once in a mapping`],
      oneFile,
    );
    expectProblems(latin1Run, [`${latin1}:3:14: file is not UTF-8 text (invalid byte 0xe9)`], oneFile);
    expectProblems(emptyRun, [`${empty}: file is empty; a sandbox definition needs at least "workspaces"`], oneFile);
    expectProblems(commentsRun, [`${commentsOnly}: file is empty; a sandbox definition needs at least "workspaces"`], oneFile);
    expectProblems(dirRun, [`${emptyDir}: no definitions here (looked for *.yaml and *.yml files)`], noFile);
    expectProblems(missingRun, [`${missing}: no such file or directory`], noFile);
  });

  it('reports a missing path as JSON too', async () => {
    const missing = join(tmp, 'nowhere', 'sandbox.yaml');
    const run = await cs(['validate', missing, '--json']);
    expect(run.exitCode).toBe(3);
    expect(parseJson(run.stdout)).toEqual({
      ok: false,
      files: [],
      issues: [{ file: missing, line: 0, column: 0, path: '', message: 'no such file or directory' }],
    });
    expectNoStackTrace(run);
  });

  it('reports two files in one folder that declare the same sandbox name, naming the other file', async () => {
    const first = await fixture('twins/a.yaml', 'name: Same\nworkspaces:\n  - name: a\n');
    const second = await fixture('twins/b.yaml', 'name: same\nworkspaces:\n  - name: b\n');
    const folder = join(tmp, 'twins');
    const [human, json] = await Promise.all([cs(['validate', folder]), cs(['validate', folder, '--json'])]);

    expectProblems(
      human,
      [`${second}:1:1 [name]: sandbox "same" is also defined in ${first}`],
      '✗ 1 problem in 1 path (2 files checked)',
    );
    expect(json.exitCode).toBe(3);
    const report = parseJson(json.stdout);
    expect(report['files']).toEqual([
      { file: first, kind: 'sandbox', ok: true },
      { file: second, kind: 'sandbox', ok: true },
    ]);
    expect(report['issues']).toEqual([
      { file: second, line: 1, column: 1, path: 'name', message: `sandbox "same" is also defined in ${first}` },
    ]);
  });

  // The duplicate-name problem points at the `name:` field it is about.
  it('points the duplicate sandbox name at its `name:` line', async () => {
    await fixture('twins-late/a.yaml', 'name: late\nworkspaces:\n  - name: a\n');
    const second = await fixture('twins-late/b.yaml', '# the name comes last\nworkspaces:\n  - name: b\nname: late\n');
    const run = await cs(['validate', join(tmp, 'twins-late')]);
    expect(run.exitCode).toBe(3);
    expect(lines(run.stdout)[0]).toMatch(new RegExp(`^${escapeRegExp(second)}:4:1 \\[name\\]: `));
  });

  // The same file reached by two spellings of its path is checked once.
  it('checks a file named twice (as ./FILE and through its folder) once', async () => {
    const run = await cs(['validate', './examples/webapp.yaml', 'examples']);
    expect(run.stdout).not.toMatch(/is also defined in/);
    expect(run.exitCode).toBe(0);
  });
});

describe('cs usage', () => {
  it('rejects unknown flags and commands with exit 2', async () => {
    const [flag, flagJson, command] = await Promise.all([
      cs(['validate', 'examples/', '--bogus']),
      cs(['validate', 'examples/', '--bogus', '--json']),
      cs(['frobnicate']),
    ]);

    expect(flag.exitCode).toBe(2);
    expect(flag.stdout).toBe('');
    expect(flag.stderr).toMatch(/Nonexistent flag: --bogus/);
    expect(flag.stderr).toMatch(/hint: see `cs validate --help`/);
    expectNoStackTrace(flag);

    expect(flagJson.exitCode).toBe(2);
    const body = parseJson(flagJson.stdout);
    const error = body['error'] as Record<string, unknown> | undefined;
    expect(error).toMatchObject({ exitCode: 2, code: 'USAGE' });
    expect(String(error?.['message'])).toMatch(/--bogus/);

    expect(command.exitCode).toBe(2);
    expect(command.stdout).toBe('');
    expect(command.stderr).toMatch(/command frobnicate not found/);
    expectNoStackTrace(command);
  });

  it('has help and a version', async () => {
    const [help, validateHelp, version] = await Promise.all([
      cs(['--help']),
      cs(['validate', '--help']),
      cs(['--version']),
    ]);

    expect(help.exitCode).toBe(0);
    expect(help.stdout).toMatch(/^COMMANDS$/m);
    expect(help.stdout).toMatch(/^\s+validate\s+Check sandbox definitions/m);

    expect(validateHelp.exitCode).toBe(0);
    expect(validateHelp.stdout).toMatch(/^USAGE\n\s+\$ cs validate /m);
    expect(validateHelp.stdout).toMatch(/^EXAMPLES$/m);
    expect(validateHelp.stdout).toMatch(/^\s+\$ cs validate examples\/$/m);
    expect(validateHelp.stdout).toMatch(/--print-model/);

    expect(version.exitCode).toBe(0);
    expect(version.stdout.trim()).toMatch(new RegExp(`^cs/${escapeRegExp(VERSION)} `));
  });
});

describe('the lean start of the commands people repeat', () => {
  /**
   * `cs exec`, `cs image pull` and `cs rootfs assemble` start without oclif
   * when their command line is a plain one. Two hooks list what a run
   * loaded: ES modules (a resolve hook) and CommonJS ones (a wrapper of
   * require's loader). oclif and the command classes live behind
   * dist/bundle/run.js, dist/bundle/commands/ and @oclif/core.
   */
  async function traced(args: readonly string[], options: { env?: Record<string, string>; closeStdout?: boolean } = {}): Promise<Run & { loaded: string[] }> {
    const log = join(tmp, `loaded-${Math.random().toString(36).slice(2)}.txt`);
    const hooks = await fixture('trace-hooks.mjs', `import { appendFileSync } from 'node:fs';\nexport async function resolve(specifier, context, next) {\n  const found = await next(specifier, context);\n  appendFileSync(process.env.TRACE_LOG, found.url + '\\n');\n  return found;\n}\n`);
    const register = await fixture('trace-register.mjs', `import { register } from 'node:module';\nimport { pathToFileURL } from 'node:url';\nregister(pathToFileURL(${JSON.stringify(hooks)}));\n`);
    const requires = await fixture('trace-require.cjs', `const Module = require('node:module');\nconst { appendFileSync } = require('node:fs');\nconst load = Module._load;\nModule._load = function (request, parent, isMain) {\n  appendFileSync(process.env.TRACE_LOG, 'require ' + request + '\\n');\n  return load.apply(this, arguments);\n};\n`);
    const child = execa(process.execPath, ['--require', requires, '--import', register, BIN, ...args], { cwd: ROOT, reject: false, env: { ...ENV, CS_HOME: join(tmp, 'lean-home'), TRACE_LOG: log, ...options.env }, extendEnv: false, stdin: 'ignore', timeout: 30_000 });
    // A reader that went away (`cs ... | head -c0`): cs's writes to stdout meet EPIPE.
    if (options.closeStdout) child.stdout?.destroy();
    const result = await child;
    const loaded = existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean) : [];
    return { exitCode: result.exitCode, stdout: String(result.stdout ?? ''), stderr: String(result.stderr), loaded };
  }
  const oclifLoaded = (loaded: string[]) => loaded.some((url) => url.endsWith('/dist/bundle/run.js') || url.includes('/dist/bundle/commands/') || url.includes('@oclif/core'));
  const leanLoaded = (loaded: string[]) => loaded.some((line) => /^require .*\/dist\/bundle\/lean-[a-z-]+\.cjs$/.test(line));

  async function compare(leanArgs: string[], oclifArgs: string[], normalize: (text: string) => string = (t) => t): Promise<Run> {
    // One after the other: the second must not find a cache the first is still filling.
    const lean = await traced(leanArgs);
    const full = await traced(oclifArgs);
    expect(leanLoaded(lean.loaded), `${leanArgs.join(' ')} did not start lean`).toBe(true);
    expect(oclifLoaded(lean.loaded), `${leanArgs.join(' ')} loaded oclif`).toBe(false);
    expect(oclifLoaded(full.loaded), `${oclifArgs.join(' ')} did not go through oclif`).toBe(true);
    expect({ exitCode: lean.exitCode, stdout: normalize(lean.stdout), stderr: normalize(lean.stderr) }, leanArgs.join(' ')).toEqual({
      exitCode: full.exitCode,
      stdout: normalize(full.stdout),
      stderr: normalize(full.stderr),
    });
    expectNoStackTrace(lean);
    return lean;
  }

  it('runs them without loading oclif, and fails exactly as oclif does', async () => {
    const nowhere = 'localhost:1/nothing/here:1';
    const pairs: [string[], string[]][] = [
      // The same command line, once lean and once through oclif (a form the lean parser leaves to it).
      [['image', 'pull', nowhere], ['image:pull', nowhere]],
      [['image', 'pull', nowhere, '--json'], ['image:pull', nowhere, '--json']],
      [['rootfs', 'assemble', '--base', nowhere, '--out', join(tmp, 'never')], ['rootfs:assemble', '--base', nowhere, '--out', join(tmp, 'never')]],
      [['rootfs', 'assemble', '--base', nowhere, '--out', join(tmp, 'never'), '--json'], ['rootfs:assemble', '--base', nowhere, '--out', join(tmp, 'never'), '--json']],
      [['exec', '-W', 'nope/dev', '-i', '-t', '--', 'true'], ['exec', '-W', 'nope/dev', '-it', '--', 'true']],
      [['exec', '-W', 'nope/dev', '--json', '--', 'true'], ['exec', '-W', 'nope/dev', '--json', '-it', '--', 'true']],
    ];
    for (const [leanArgs, oclifArgs] of pairs) expect((await compare(leanArgs, oclifArgs)).exitCode).not.toBe(0);
  });

  it('succeeds exactly as oclif does, for people and as JSON, and a reader that goes away is no error', async () => {
    const tree = join(tmp, 'lean-tree');
    await mkdir(join(tree, 'etc'), { recursive: true });
    await writeFile(join(tree, 'etc', 'os-release'), 'lean\n');
    const imported = await traced(['image', 'import', tree, 'localhost/lean/base:1']);
    expect(imported.exitCode, imported.stderr).toBe(0);
    const out = (name: string) => join(tmp, `lean-out-${name}`);
    // Both runs below find the tree cached.
    expect((await traced(['rootfs', 'assemble', '--base', 'localhost/lean/base:1', '--format', 'tar', '--out', out('first')])).exitCode).toBe(0);
    const same = (text: string) => text.replaceAll(/lean-out-[a-z]+/g, 'lean-out-X');
    for (const json of [false, true]) {
      const extra = json ? ['--json'] : [];
      const tag = json ? 'json' : 'text';
      const lean = await compare(['rootfs', 'assemble', '--base', 'localhost/lean/base:1', '--format', 'tar', '--out', out(`a${tag}`), ...extra], ['rootfs:assemble', '--base', 'localhost/lean/base:1', '--format', 'tar', '--out', out(`b${tag}`), ...extra], same);
      expect(lean.exitCode).toBe(0);
      if (json) expect(parseJson(lean.stdout)['format']).toBe('tar');
      else expect(lean.stderr).toMatch(/^Wrote tar to .*: 1 layer, /m);
    }
    const cut = await traced(['rootfs', 'assemble', '--base', 'localhost/lean/base:1', '--format', 'tar', '--out', out('cut'), '--json'], { closeStdout: true });
    expect(leanLoaded(cut.loaded)).toBe(true);
    expect(cut.exitCode, cut.stderr).toBe(0);
    expect(cut.stderr).toBe('');
  });

  it('leaves help, mistakes and JSON asked for through the environment to oclif', async () => {
    const help = await traced(['exec', '--help']);
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toMatch(/^USAGE\n\s+\$ cs exec /m);
    expect(oclifLoaded(help.loaded)).toBe(true);

    const missing = await traced(['rootfs', 'assemble', '--base', 'x']);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toMatch(/Missing required flag out/);
    expect(oclifLoaded(missing.loaded)).toBe(true);

    const flagAsValue = await traced(['rootfs', 'assemble', '--base', 'x', '--out=-o']);
    expect(flagAsValue.exitCode).toBe(2);
    expect(flagAsValue.stderr).toMatch(/--out expects a value/);

    const viaEnv = await traced(['image', 'pull', 'localhost:1/nothing/here:1'], { env: { CS_CONTENT_TYPE: 'json' } });
    expect(viaEnv.exitCode).toBe(4);
    expect((parseJson(viaEnv.stdout)['error'] as Record<string, unknown>)['exitCode']).toBe(4);
    expect(oclifLoaded(viaEnv.loaded)).toBe(true);
  });
});

describe('cs rootfs prune', () => {
  it('removes root images nothing names, keeps those a workspace names, reports as JSON, and refuses to guess past a broken record', async () => {
    const csHome = join(tmp, 'prune-home');
    const env = { ...ENV, CS_HOME: csHome, HOME: join(tmp, 'prune-user'), XDG_DATA_HOME: join(tmp, 'prune-user', 'data') };
    const images = join(csHome, 'images');
    await mkdir(images, { recursive: true });
    await writeFile(join(images, 'old.erofs'), 'an image nothing uses');
    await writeFile(join(images, 'used.erofs'), 'an image a workspace boots from');
    const dev = join(csHome, 'sandboxes', 'shop', 'dev');
    await mkdir(dev, { recursive: true });
    await writeFile(join(dev, 'workspace.json'), JSON.stringify({ lowers: [join(images, 'used.erofs')] }));
    const run = (args: string[]) => execa(process.execPath, [BIN, ...args], { cwd: ROOT, reject: false, env, extendEnv: false, stdin: 'ignore', timeout: 30_000 });
    const text = await run(['rootfs', 'prune']);
    expect(text.exitCode, text.stderr).toBe(0);
    expect(text.stderr).toMatch(/^Removed 1 root image \(\d+(\.\d+)? (B|KiB) freed\); 1 kept$/);
    expect(existsSync(join(images, 'old.erofs'))).toBe(false);
    const json = await run(['rootfs', 'prune', '--json']);
    expect(parseJson(String(json.stdout))).toEqual({ removed: [], freedBytes: 0, kept: 1 });
    await writeFile(join(dev, 'workspace.json'), 'not json');
    const broken = await run(['rootfs', 'prune']);
    expect(broken.exitCode).toBe(3);
    expect(broken.stderr).toMatch(/workspace\.json is not valid JSON, so which root images it uses is unknown; nothing was pruned/);
    expect(existsSync(join(images, 'used.erofs'))).toBe(true);
  });
});

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
