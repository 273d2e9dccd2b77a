import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseDefinition } from '../definition/load.js';
import type { Workspace } from '../definition/model.js';
import { writeRecord, type WorkspaceRecord } from '../workspace/state.js';
import { inScope, readDesired, sha256 } from './desired.js';
import { buildPlan, compareSpecs, imageChange, rootNeeds } from './plan.js';
import { syncSummary, writeSync } from './status.js';

/**
 * The planner without VMs: how each field change is classified, how image
 * versions compare, what the desired state is for a folder of files, and
 * the plan against workspace records written into a scratch data directory
 * (the VM tests in test/vm/reconcile.test.ts apply plans for real).
 */

function workspace(yaml: string): Workspace {
  const result = parseDefinition({ file: 'demo.yaml', text: `workspaces:\n  - name: dev\n${yaml.replace(/^/gm, '    ')}\n` });
  if (!result.ok || result.kind !== 'sandbox') throw new Error(result.issues.map((i) => i.message).join('\n'));
  return result.model.workspaces[0] as Workspace;
}

const BASE = 'base_snapshot: oci://localhost/test/img:1';

describe('compareSpecs: every change says how it is applied', () => {
  const old = workspace(`${BASE}
env: [A=1, B=2]
resources: {cpus: 1, memory: 512Mi, disk: 1Gi}
system:
  files: [{path: /etc/a, content: one}]
  daemons: [{name: web, run: {cmd: serve}}]
checkouts: [{path: src, repo: {git: /srv/a.git}}]`);

  it('finds nothing when nothing changed', () => {
    expect(compareSpecs(old, old, old.resources.diskBytes)).toEqual([]);
  });

  it('env, files, daemons, ports and probes are in place; cpus, memory and kernel restart', () => {
    const next = workspace(`${BASE}
env: [A=1, B=3, C=4]
resources: {cpus: 2, memory: 1Gi, disk: 1Gi}
kernel: oci://localhost/test/kernel:1
ports: [{name: http, port: 8080, protocol: HTTP}]
probes: {readiness: [{tcp_port: 8080}]}
system:
  files: [{path: /etc/b, content: two}]
  daemons: [{name: web, run: {cmd: serve --fast}}]
checkouts: [{path: src, repo: {git: /srv/a.git}}]`);
    const changes = compareSpecs(old, next, old.resources.diskBytes);
    const by = Object.fromEntries(changes.map((c) => [c.field, c]));
    expect(by['env.B']).toEqual({ field: 'env.B', from: '2', to: '3', effect: 'in-place' });
    expect(by['env.C']).toEqual({ field: 'env.C', to: '4', effect: 'in-place' });
    expect(by['system.files[/etc/b]']?.effect).toBe('in-place');
    expect(by['system.files[/etc/a]']).toMatchObject({ effect: 'in-place', note: 'removed from the workspace unless changed there' });
    expect(by['system.daemons[web]']?.effect).toBe('in-place');
    expect(by['ports[http]']?.effect).toBe('in-place');
    expect(by['probes.readiness']?.effect).toBe('in-place');
    expect(by['resources.cpus']).toEqual({ field: 'resources.cpus', from: '1', to: '2', effect: 'restart' });
    expect(by['resources.memory']).toEqual({ field: 'resources.memory', from: '512 MiB', to: '1024 MiB', effect: 'restart' });
    expect(by['kernel']).toEqual({ field: 'kernel', from: 'default', to: 'oci://localhost/test/kernel:1', effect: 'restart' });
    expect(by['env.A']).toBeUndefined();
  });

  it('a disk size is held, hooks are recorded, a checkout is cloned but never replaced', () => {
    const next = workspace(`${BASE}
env: [A=1, B=2]
resources: {cpus: 1, memory: 512Mi, disk: 2Gi}
lifecycle: {on_resume: {run: {cmd: make}}}
system:
  files: [{path: /etc/a, content: one}]
  daemons: [{name: web, run: {cmd: serve}}]
checkouts: [{path: src, repo: {git: /srv/b.git}}, {path: docs, repo: {git: /srv/docs.git}}]`);
    const by = Object.fromEntries(compareSpecs(old, next, old.resources.diskBytes).map((c) => [c.field, c]));
    expect(by['resources.disk']).toMatchObject({ effect: 'held', note: expect.stringContaining('not resized') });
    expect(by['lifecycle.on_resume']).toMatchObject({ to: 'make', effect: 'recorded' });
    expect(by['checkouts[docs]']?.effect).toBe('in-place');
    expect(by['checkouts[src]']).toMatchObject({ effect: 'recorded', note: 'the existing folder is kept as it is' });
  });
});

describe('image versions', () => {
  it('tells another snapshot from a new version of the same one', () => {
    expect(imageChange({ label: 'py', snapshot: 'py', digest: 'sha256:a' }, { label: 'py', snapshot: 'py', digest: 'sha256:a' })).toBeUndefined();
    expect(imageChange({ label: 'py', snapshot: 'py', digest: 'sha256:b' }, { label: 'py', snapshot: 'py', digest: 'sha256:a' })).toBe('new-version');
    expect(imageChange({ label: 'go', snapshot: 'go' }, { label: 'py', snapshot: 'py', digest: 'sha256:a' })).toBe('changed');
    expect(imageChange({ label: 'oci://r/x:1', reference: 'r/x:1' }, { label: 'x', snapshot: 'x', reference: 'r/x:1' })).toBe('changed');
    // A version that cannot be told (not pulled yet) is not a change.
    expect(imageChange({ label: 'oci://r/x:1', reference: 'r/x:1' }, { label: 'oci://r/x:1', reference: 'r/x:1', digest: 'sha256:a' })).toBeUndefined();
    expect(imageChange(undefined, { label: 'h', snapshot: 'h' })).toBe('changed');
    expect(imageChange(undefined, undefined)).toBeUndefined();
  });

  it('a new home snapshot is held unless --refresh-home; a new base refreshes the root', () => {
    const record = { images: [{ kind: 'base', reference: 'r/b:1', digest: 'sha256:1' }, { kind: 'home', reference: 'h', snapshot: 'h', digest: 'sha256:2' }] } as WorkspaceRecord;
    const versions = { base: { label: 'oci://r/b:1', reference: 'r/b:1', digest: 'sha256:9' }, home: { label: 'h', snapshot: 'h', digest: 'sha256:3' } };
    const held = rootNeeds(versions, record, false);
    expect(held).toMatchObject({ base: true, home: false });
    expect(held.changes).toEqual([
      { field: 'base_snapshot', from: 'oci://r/b:1@1', to: 'oci://r/b:1@9 (new version)', effect: 'refresh-root', note: expect.stringContaining('come along at their new versions') },
    ]);
    expect(held.held).toEqual([expect.objectContaining({ field: 'home_snapshot', effect: 'held' })]);
    const applied = rootNeeds(versions, record, true);
    expect(applied).toMatchObject({ base: true, home: true, held: [] });
    expect(applied.changes.map((c) => c.effect)).toEqual(['refresh-root', 'rebuild-root']);
  });
});

describe('desired state and the plan', () => {
  let dir: string;
  let home: string;
  const env = (): Record<string, string> => ({ CS_HOME: home, CS_CONFIG: join(home, 'config.yaml') });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cs-plan-defs-'));
    home = await mkdtemp(join(tmpdir(), 'cs-plan-home-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
    await rm(home, { recursive: true, force: true });
  });

  /** A workspace record as `cs apply` leaves it, from a definition file. */
  async function existing(sandbox: string, file: string, yaml: string, extra: Partial<WorkspaceRecord> = {}): Promise<string> {
    const ws = workspace(yaml);
    const wsDir = join(home, 'sandboxes', sandbox, ws.name);
    await mkdir(wsDir, { recursive: true });
    const record: WorkspaceRecord = {
      version: 1,
      sandbox,
      name: ws.name,
      file,
      createdAt: new Date().toISOString(),
      desired: 'suspended',
      spec: ws,
      lowers: ['/images/x.erofs'],
      images: [{ kind: 'base', reference: 'localhost/test/img:1' }],
      chainId: 'sha256:0',
      kernel: { version: '6.1', vmlinuz: '/k/vmlinuz' },
      initramfs: '/k/initrd',
      accel: 'tcg',
      cpus: ws.resources.cpus,
      memoryMiB: ws.resources.memoryMiB,
      diskBytes: ws.resources.diskBytes,
      ports: [],
      ...extra,
    };
    await writeRecord(wsDir, record);
    return wsDir;
  }

  it('names sandboxes by name: or file, and refuses two files naming one sandbox', async () => {
    await writeFile(join(dir, 'api.yaml'), `workspaces: [{name: dev, ${BASE.replace(': ', ': ')}}]\n`);
    await writeFile(join(dir, 'web.yaml'), `name: shop\nworkspaces: [{name: dev}]\n`);
    await writeFile(join(dir, 'shop2.yaml'), `name: Shop\nworkspaces: [{name: dev}]\n`);
    const desired = await readDesired(dir);
    // Neither file defines "shop" until one of them is fixed.
    expect([...desired.sandboxes.keys()]).toEqual(['api']);
    expect([...desired.invalid.keys()].sort()).toEqual([join(dir, 'shop2.yaml'), join(dir, 'web.yaml')]);
    expect(desired.issues.map((i) => i.message).join('\n')).toMatch(/sandbox "shop" is also defined in/);
    expect(inScope(desired, join(dir, 'team', 'x.yaml'))).toBe(true);
    expect(inScope(desired, join(dir, '..', 'x.yaml'))).toBe(false);
    expect(inScope(desired, '')).toBe(false);
  });

  it('creates the new, keeps or prunes the gone, and leaves a sandbox with an invalid definition alone', async () => {
    const kept = join(dir, 'kept.yaml');
    const broken = join(dir, 'broken.yaml');
    await writeFile(kept, `workspaces:\n  - name: dev\n    ${BASE}\n`);
    await writeFile(broken, 'workspaces:\n  - name: dev\n    cpus: [\n');
    await writeFile(join(dir, 'fresh.yaml'), `workspaces:\n  - name: dev\n    ${BASE}\n`);
    const applied = (file: string) => ({ applied: { file, sha256: 'old', at: '' } });
    await existing('kept', kept, BASE);
    await existing('broken', broken, BASE, applied(broken));
    await existing('gone', join(dir, 'gone.yaml'), BASE, applied(join(dir, 'gone.yaml')));
    await existing('elsewhere', '/somewhere/else.yaml', BASE, applied('/somewhere/else.yaml'));
    await existing('loner', '', BASE, { standalone: true });
    // Made by `cs sandbox create` (never applied): cs apply does not judge it, whatever happened to its file.
    await existing('manual', join(dir, 'manual.yaml'), BASE);
    // Applied from a file the search does not read (a hidden folder): not "gone".
    await mkdir(join(dir, '.private'), { recursive: true });
    await writeFile(join(dir, '.private', 'hidden.yaml'), `workspaces:\n  - name: dev\n    ${BASE}\n`);
    await existing('hidden', join(dir, '.private', 'hidden.yaml'), BASE, applied(join(dir, '.private', 'hidden.yaml')));
    const desired = await readDesired(dir);
    const plan = await buildPlan(desired, { env: env() });
    const by = Object.fromEntries(plan.sandboxes.map((s) => [s.sandbox, s]));
    expect(by['fresh']?.action).toBe('create');
    // Made by `cs sandbox create` from the same file: adopted, and only its record is brought to the file's version.
    expect(by['kept']?.action).toBe('update');
    expect(by['kept']?.workspaces[0]).toMatchObject({ action: 'update', changes: [] });
    expect(by['broken']).toMatchObject({ action: 'blocked', reason: expect.stringMatching(/invalid, so its last good spec stays applied: .*broken\.yaml:\d+:\d+ YAML syntax/) });
    expect(by['gone']).toMatchObject({ action: 'keep', reason: expect.stringContaining('--prune') });
    expect(by['elsewhere']).toBeUndefined();
    expect(by['loner']).toBeUndefined();
    expect(by['manual']).toBeUndefined();
    expect(by['hidden']).toBeUndefined();
    expect(plan.empty).toBe(false);
    // While any definition has a problem, nothing is removed, even with --prune.
    const held = await buildPlan(desired, { env: env(), prune: true });
    expect(held.sandboxes.find((s) => s.sandbox === 'gone')).toMatchObject({ action: 'keep', reason: expect.stringContaining('not removed while the definitions have problems') });
    await rm(broken);
    const pruned = await buildPlan(await readDesired(dir), { env: env(), prune: true });
    expect(pruned.sandboxes.find((s) => s.sandbox === 'gone')?.action).toBe('remove');
    // Its file is gone now too: removed like any other.
    expect(pruned.sandboxes.find((s) => s.sandbox === 'broken')?.action).toBe('remove');
    expect(pruned.sandboxes.find((s) => s.sandbox === 'hidden')).toBeUndefined();
  });

  it('a workspace whose record is at the file\'s version needs nothing; a stopped one stays stopped', async () => {
    const file = join(dir, 'demo.yaml');
    const text = `workspaces:\n  - name: dev\n    ${BASE}\n    env: [A=1]\n`;
    await writeFile(file, text);
    const desired = await readDesired(dir);
    const source = desired.sandboxes.get('demo');
    await existing('demo', file, `${BASE}\nenv: [A=1]`, { applied: { file, sha256: sha256(Buffer.from(text)), at: '' } });
    const plan = await buildPlan(desired, { env: env() });
    expect(source?.sha256).toBe(sha256(Buffer.from(text)));
    expect(plan.empty).toBe(true);
    expect(plan.sandboxes[0]?.workspaces[0]).toMatchObject({ action: 'none', status: 'suspended', changes: [], pending: [] });
  });

  it('a standalone workspace of the same name is never taken over', async () => {
    await writeFile(join(dir, 'loner.yaml'), `workspaces:\n  - name: loner\n    ${BASE}\n`);
    await existing('loner', '', BASE.replace('dev', 'loner'), { standalone: true });
    const plan = await buildPlan(await readDesired(dir), { env: env() });
    expect(plan.sandboxes[0]).toMatchObject({ sandbox: 'loner', action: 'blocked', reason: expect.stringContaining('cs workspace create') });
  });

  it('sandbox list\'s SYNC: in sync, out of date, gone, reconciling, failed, interrupted', async () => {
    const file = join(dir, 'demo.yaml');
    await writeFile(file, 'one');
    const wsDir = await existing('demo', file, BASE, { applied: { file, sha256: sha256(Buffer.from('one')), at: '' } });
    const record = (await import('../workspace/state.js')).readRecord;
    const r = async () => (await record(wsDir)) as WorkspaceRecord;
    expect(await syncSummary(wsDir, await r())).toMatchObject({ state: 'in-sync', version: sha256(Buffer.from('one')).slice(0, 12) });
    await writeFile(file, 'two');
    expect((await syncSummary(wsDir, await r())).state).toBe('out-of-date');
    await rm(file);
    expect((await syncSummary(wsDir, await r())).state).toBe('definition-gone');
    await writeSync(wsDir, { state: 'applying', attempts: 1 });
    expect((await syncSummary(wsDir, await r())).state).toBe('reconciling');
    await writeFile(join(wsDir, 'reconcile.json'), JSON.stringify({ state: 'applying', pid: 2 ** 22 + 1, at: '', attempts: 1 }));
    expect((await syncSummary(wsDir, await r())).state).toBe('interrupted');
    await writeSync(wsDir, { state: 'failed', attempts: 4, reason: 'boom' });
    expect(await syncSummary(wsDir, await r())).toMatchObject({ state: 'failed', reason: 'boom' });
    const unmanaged = await existing('other', file, BASE);
    expect((await syncSummary(unmanaged, (await record(unmanaged)) as WorkspaceRecord)).state).toBe('unmanaged');
  });
});
