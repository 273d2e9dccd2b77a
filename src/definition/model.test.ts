import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DefinitionError } from './issues.js';
import { loadSandbox, parseDefinition } from './load.js';
import { DEFAULT_RESOURCES, type Sandbox } from './model.js';

/** The typed model: defaults applied, names normalised, values converted. */

function sandbox(text: string, file = 'team/api.yaml'): Sandbox {
  const result = parseDefinition({ file, text });
  if (!result.ok) throw new Error(result.issues.map((i) => i.message).join('\n'));
  if (result.kind !== 'sandbox') throw new Error('expected a sandbox');
  return result.model;
}

describe('sandbox model', () => {
  it('names the sandbox after its file unless it has a name, lower-cased', () => {
    expect(sandbox('workspaces: [{name: dev}]').name).toBe('api');
    expect(sandbox('name: Shop\nworkspaces: [{name: dev}]').name).toBe('shop');
    expect(sandbox('workspaces: [{name: Dev}]').workspaces[0]?.name).toBe('dev');
  });

  it('applies defaults to a minimal workspace', () => {
    const [w] = sandbox('workspaces: [{name: dev}]').workspaces;
    expect(w).toEqual({
      name: 'dev',
      description: '',
      kernel: { kind: 'default' },
      env: [],
      checkouts: [],
      ports: [],
      portForwardRules: [],
      system: { files: [], daemons: [] },
      probes: { readiness: [] },
      waitFor: [],
      lifecycle: {},
      resources: DEFAULT_RESOURCES,
      home: '/home/owner',
    });
    expect(DEFAULT_RESOURCES).toEqual({ cpus: 1, memoryMiB: 1024, diskBytes: 10 * 1024 ** 3 });
  });

  it('merges sandbox env under workspace env, the workspace winning, values kept verbatim', () => {
    const [w] = sandbox(`
env: [A=1, B=2, "URL=http://x/?a=b=c"]
workspaces:
  - name: dev
    env: [B=20, C=]
`).workspaces;
    expect(w?.env).toEqual([
      { name: 'A', value: '1' },
      { name: 'URL', value: 'http://x/?a=b=c' },
      { name: 'B', value: '20' },
      { name: 'C', value: '' },
    ]);
  });

  it('converts sizes, modes, durations and references', () => {
    const [w] = sandbox(`
workspaces:
  - name: dev
    base_snapshot: oci://localhost:5000/team/base:v1
    home_snapshot: team-home
    kernel: oci://127.0.0.1:5000/kernels/cloud@sha256:${'a'.repeat(64)}
    resources: {cpus: 2, memory: 2Gi, disk: 20G}
    system:
      files:
        - {path: /etc/a, mode: 0644, content: x}
        - {path: /etc/b, mode: "0755", template: "\${A}"}
        - {path: /etc/c/, mode: 0o600, symlink: /etc/a}
        - {path: /etc/d, content: ""}
    lifecycle:
      on_create: {run: {cmd: make, dir: src}, timeout: 90s}
`).workspaces;
    expect(w?.resources).toEqual({ cpus: 2, memoryMiB: 2048, diskBytes: 20_000_000_000 });
    expect(w?.baseSnapshot).toEqual({
      kind: 'oci',
      text: 'oci://localhost:5000/team/base:v1',
      reference: { registry: 'localhost:5000', repository: 'team/base', tag: 'v1' },
    });
    expect(w?.homeSnapshot).toEqual({ kind: 'name', name: 'team-home' });
    expect(w?.kernel).toMatchObject({ kind: 'oci', reference: { registry: '127.0.0.1:5000', digest: `sha256:${'a'.repeat(64)}` } });
    expect(w?.system.files).toEqual([
      { path: '/etc/a', mode: 0o644, kind: 'content', content: 'x' },
      { path: '/etc/b', mode: 0o755, kind: 'template', template: '${A}' },
      { path: '/etc/c', mode: 0o600, kind: 'symlink', target: '/etc/a' },
      { path: '/etc/d', kind: 'content', content: '' },
    ]);
    expect(w?.lifecycle.onCreate).toEqual({ run: { cmd: 'make', dir: 'src', env: [] }, timeoutMs: 90_000 });
  });

  it('resolves port forwards by port name and normalises checkouts', () => {
    const [db, app] = sandbox(`
workspaces:
  - name: DB
    ports: [{name: PG, port: 5432}]
  - name: app
    wait_for: [db]
    checkouts:
      - {path: "./src//api/", repo: {git: /srv/git/api.git}, version_spec: v2, history: {depth: 1}}
    port_forward_rules:
      - {local: 15432, remote: {target: Db, port: pg}}
      - {local: "localhost:8080", remote: {target: db, port: 80}}
`).workspaces;
    expect(db?.ports).toEqual([{ name: 'pg', port: 5432, protocol: 'TCP' }]);
    expect(app?.waitFor).toEqual(['db']);
    expect(app?.checkouts).toEqual([{ path: 'src/api', repo: { git: '/srv/git/api.git' }, versionSpec: 'v2', historyDepth: 1 }]);
    expect(app?.portForwardRules).toEqual([
      { local: { host: '127.0.0.1', port: 15432 }, remote: { target: 'db', port: 5432, portName: 'pg' } },
      { local: { host: 'localhost', port: 8080 }, remote: { target: 'db', port: 80 } },
    ]);
  });

  it('builds probes and daemons', () => {
    const [w] = sandbox(`
workspaces:
  - name: dev
    system:
      daemons: [{name: Web, run: {cmd: npm start, env: [PORT=3000]}}]
    probes:
      readiness:
        - {command: "curl -f localhost"}
        - {name: tcp, tcp_port: 22}
        - {http_get: {port: 80}}
`).workspaces;
    expect(w?.system.daemons).toEqual([{ name: 'web', run: { cmd: 'npm start', env: [{ name: 'PORT', value: '3000' }] } }]);
    expect(w?.probes.readiness).toEqual([
      { kind: 'command', command: 'curl -f localhost' },
      { name: 'tcp', kind: 'tcp', port: 22 },
      { kind: 'http', port: 80, path: '/' },
    ]);
  });

  it('builds a repo manifest model', () => {
    const result = parseDefinition({
      file: 'repo/.sandbox/manifest.yml',
      text: 'env: [A=1]\nhooks: {build: {cmd: make, dir: web}}\ndaemons: {Web: {run: {cmd: serve}}}\njobs: {gc: {run: {cmd: gc}, schedule: "0 * * * *"}}\n',
    });
    expect(result).toMatchObject({
      ok: true,
      kind: 'manifest',
      model: {
        env: [{ name: 'A', value: '1' }],
        hooks: { build: { cmd: 'make', dir: 'web', env: [] } },
        daemons: [{ name: 'web', run: { cmd: 'serve', env: [] } }],
        jobs: [{ name: 'gc', run: { cmd: 'gc', env: [] }, schedule: '0 * * * *' }],
      },
    });
  });
});

describe('loadSandbox (the boundary for later stages)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cs-model-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('returns the model of a valid file', async () => {
    const file = join(dir, 'ok.yaml');
    await writeFile(file, 'workspaces: [{name: dev}]\n');
    await expect(loadSandbox({ file })).resolves.toMatchObject({ name: 'ok', file, workspaces: [{ name: 'dev' }] });
  });

  it('throws one DefinitionError listing every issue, exit code 3', async () => {
    const file = join(dir, 'bad.yaml');
    await writeFile(file, 'workspaces:\n  - name: a\n  - name: A\n    ports: [{name: x, port: 0}]\n');
    const error = await loadSandbox({ file }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DefinitionError);
    const definitionError = error as DefinitionError;
    expect(definitionError.exitCode).toBe(3);
    expect(definitionError.issues.map((i) => `${i.line}:${i.column} ${i.path}`)).toEqual([
      '3:11 workspaces.1.name',
      '4:29 workspaces.1.ports.0.port',
    ]);
    expect(definitionError.message).toContain(`${file}:3:11 [workspaces.1.name]: workspace name "A" is already used at line 2`);
  });
});
