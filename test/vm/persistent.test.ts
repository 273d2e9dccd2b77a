/**
 * Workspaces without a definition, for real: microVMs booted by `cs exec`,
 * disks that outlive stop and start, restore points taken on stopped and
 * running workspaces and restored, templates cloned and diverging, the
 * quota refusing before anything is made, a full disk giving ENOSPC to its
 * own workspace only, conflicting commands refused, and a git repository
 * imported into /workspace and cloned again when the disk is lost.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csClient, ensureBuilt, runCs, startCs, type Run } from '../helpers/cli.js';
import { importTinyImage, vmHome } from '../helpers/vm.js';

interface Info {
  id: string;
  status: string;
  template: boolean;
  label?: string;
  restorePoints: number;
  origin?: { clonedFrom?: string; git?: { url: string; ref?: string; commit: string; path: string } };
}

interface Point {
  name: string;
  state: string;
  live: boolean;
  bytes: number;
}

describe('persistent workspaces', () => {
  let home: Awaited<ReturnType<typeof vmHome>> | undefined;
  let env: Record<string, string>;
  let image: string;
  let work: string;
  const { cs, ok, json } = csClient(() => env);
  const sh = (name: string, command: string): Promise<Run> => cs('exec', '--workspace', name, '--', 'sh', '-c', command);
  /** A command's output (runCs strips the last newline). */
  const out = async (name: string, command: string): Promise<string> => {
    const result = await sh(name, command);
    expect(result.exitCode, result.stderr).toBe(0);
    return result.stdout;
  };
  const create = (name: string, ...more: string[]): Promise<Run> => ok('workspace', 'create', '--name', name, '--image', image, '--disk', '512Mi', '--memory', '256Mi', ...more);
  const diskFiles = async (name: string): Promise<string[]> => (await readdir(join(env['CS_HOME'] as string, 'sandboxes', name, name, 'disk'))).sort();

  beforeAll(async () => {
    await ensureBuilt('workspace/create');
    home = await vmHome();
    env = home.env;
    image = await importTinyImage(env);
    work = await mkdtemp(join(tmpdir(), 'cs-persist-'));
  }, 600_000);

  afterAll(async () => {
    if (home) {
      for (const name of ['keep', 'fromsnap', 'tpl', 'feat-a', 'feat-b', 'small', 'repo', 'busy']) await cs('workspace', 'remove', name, '--force');
      await home.cleanup();
    }
    if (work) await rm(work, { recursive: true, force: true });
  }, 300_000);

  it('names: one rule, unique regardless of case, clear errors', async () => {
    const bad = await cs('workspace', 'create', '--name', '9lives', '--image', image);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/invalid workspace name "9lives": a name must start with a letter/);
    const long = await cs('workspace', 'create', '--name', `a${'b'.repeat(63)}`, '--image', image);
    expect(long.exitCode).toBe(2);
    expect(long.stderr).toMatch(/at most 63 characters/);
    await create('Keep');
    const clash = await cs('workspace', 'create', '--name', 'KEEP', '--image', image);
    expect(clash.exitCode).not.toBe(0);
    expect(clash.stderr).toMatch(/the name "keep" is taken/);
    const nothing = await cs('workspace', 'create', '--name', 'empty');
    expect(nothing.exitCode).toBe(2);
    expect(nothing.stderr).toMatch(/--image REF .* or --snapshot NAME/);
    expect(existsSync(join(env['CS_HOME'] as string, 'sandboxes', 'empty'))).toBe(false);
  }, 300_000);

  it('exec starts a stopped workspace, says so, and files persist across execs and stop/start', async () => {
    const shown = await json<Info>('workspace', 'show', 'keep');
    expect(shown.status).toBe('suspended');
    const first = await sh('keep', 'echo one > /home/owner/f && cat /home/owner/f');
    expect(first.exitCode, first.stderr).toBe(0);
    expect(first.stdout).toBe('one');
    expect(first.stderr).toMatch(/workspace keep is stopped; starting it/);
    const second = await sh('keep', 'cat /home/owner/f');
    expect(second.stdout).toBe('one');
    expect(second.stderr).not.toMatch(/starting it/);
    await ok('workspace', 'stop', 'keep');
    expect((await json<Info>('workspace', 'show', 'keep')).status).toBe('suspended');
    await ok('workspace', 'start', 'keep');
    expect(await out('keep', 'cat /home/owner/f')).toBe('one');
    // The same workspace through the sandbox commands: one model.
    const list = (await json<{ workspaces: { sandbox: string; workspace: string; status: string }[] }>('sandbox', 'list')).workspaces;
    expect(list.find((w) => w.sandbox === 'keep')?.status).toBe('running');
  }, 300_000);

  it('restore points: taken stopped and running, restored, listed, deleted', async () => {
    await ok('workspace', 'stop', 'keep');
    const cold = await json<Point>('workspace', 'snapshots', 'create', 'keep', '--name', 'one');
    expect(cold).toMatchObject({ name: 'one', state: 'ready', live: false });
    expect(await out('keep', 'echo two > /home/owner/f && echo g > /home/owner/g && cat /home/owner/f')).toBe('two');
    const live = await json<Point>('workspace', 'snapshots', 'create', 'keep', '--name', 'Two');
    expect(live).toMatchObject({ name: 'Two', state: 'ready', live: true });
    // The running workspace carries on writing after the switch to a new overlay.
    expect(await out('keep', 'echo three > /home/owner/f && cat /home/owner/f /home/owner/g')).toBe('three\ng');
    // Writes after the switch land in the new overlay, which the record names: they survive a stop and start.
    await ok('workspace', 'stop', 'keep');
    expect(await out('keep', 'cat /home/owner/f')).toBe('three');
    const dup = await cs('workspace', 'snapshots', 'create', 'keep', '--name', 'two');
    expect(dup.exitCode).not.toBe(0);
    expect(dup.stderr).toMatch(/already has a restore point "two"/);

    const refused = await cs('workspace', 'snapshots', 'restore', 'keep', 'one');
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/keep is running; restoring replaces its disk/);
    expect(await out('keep', 'cat /home/owner/f')).toBe('three');

    const forced = await json<{ restarted: boolean }>('workspace', 'snapshots', 'restore', 'keep', 'one', '--force');
    expect(forced.restarted).toBe(true);
    expect(await out('keep', 'cat /home/owner/f; ls /home/owner')).toBe('one\nf');
    await ok('workspace', 'snapshots', 'restore', 'keep', 'TWO', '--force');
    expect(await out('keep', 'cat /home/owner/f /home/owner/g')).toBe('two\ng');

    const listed = await json<{ restorePoints: Point[] }>('workspace', 'snapshots', 'list', 'keep');
    expect(listed.restorePoints.map((p) => [p.name, p.live])).toEqual([
      ['one', false],
      ['Two', true],
    ]);
    const missing = await cs('workspace', 'snapshots', 'restore', 'keep', 'three');
    expect(missing.exitCode).not.toBe(0);
    expect(missing.stderr).toMatch(/no restore point "three"[\s\S]*it has: one, Two/);

    await ok('workspace', 'stop', 'keep');
    const before = await diskFiles('keep');
    const deleted = await json<{ freedBytes: number }>('workspace', 'snapshots', 'delete', 'keep', 'two');
    expect((await json<{ restorePoints: Point[] }>('workspace', 'snapshots', 'list', 'keep')).restorePoints.map((p) => p.name)).toEqual(['one']);
    // The current disk reads through the point's file: it stays, nothing is freed, and the workspace has its files.
    expect(deleted.freedBytes).toBe(0);
    expect(await diskFiles('keep')).toEqual(before);
    expect(await out('keep', 'cat /home/owner/f /home/owner/g')).toBe('two\ng');
    // Back to "one": now nothing reads the files written after it, and they are gone from the disk folder.
    await ok('workspace', 'snapshots', 'restore', 'keep', 'one', '--force');
    const after = await diskFiles('keep');
    expect(after.length).toBeLessThan(before.length);
    expect(await out('keep', 'cat /home/owner/f; ls /home/owner')).toBe('one\nf');
  }, 600_000);

  it('a base snapshot of a workspace whose disk is an overlay chain reads through the chain', async () => {
    // keep's disk is overlays on its base by now (restore points were taken and restored); it is running.
    expect((await diskFiles('keep')).some((f) => f.endsWith('.qcow2'))).toBe(true);
    await ok('exec', '--workspace', 'keep', '--user', 'root', '--', 'sh', '-c', 'mkdir -p /opt && echo from-keep > /opt/marker');
    await ok('snapshot', 'create', 'keepbase', '-W', 'keep');
    await ok('workspace', 'stop', 'keep');
    await ok('snapshot', 'create', 'keepbase-stopped', '-W', 'keep');
    for (const snapshot of ['keepbase', 'keepbase-stopped']) {
      await ok('workspace', 'create', '--name', 'fromsnap', '--snapshot', snapshot, '--disk', '512Mi', '--memory', '256Mi');
      expect(await out('fromsnap', 'cat /opt/marker')).toBe('from-keep');
      await ok('workspace', 'remove', 'fromsnap');
    }
  }, 600_000);

  it('templates: clones are refused while the source runs, then diverge independently', async () => {
    await create('tpl', '--template', '--label', 'team template');
    expect(await out('tpl', 'echo from-template > /home/owner/marker && cat /home/owner/marker')).toBe('from-template');
    const refused = await cs('workspace', 'create', '--name', 'feat-a', '--clone-from', 'tpl');
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/workspace tpl is running; a clone copies a stopped disk/);
    expect(existsSync(join(env['CS_HOME'] as string, 'sandboxes', 'feat-a'))).toBe(false);

    await ok('workspace', 'stop', 'tpl');
    const a = await json<Info>('workspace', 'create', '--name', 'feat-a', '--clone-from', 'tpl');
    expect(a.origin?.clonedFrom).toBe('tpl');
    expect(a.template).toBe(false);
    await ok('workspace', 'create', '--name', 'feat-b', '--clone-from', 'tpl');
    expect(await out('feat-a', 'cat /home/owner/marker && echo a > /home/owner/marker')).toBe('from-template');
    expect(await out('feat-b', 'cat /home/owner/marker && echo b > /home/owner/marker && echo only-b > /home/owner/b')).toBe('from-template');
    expect(await out('tpl', 'cat /home/owner/marker; ls /home/owner; echo t > /home/owner/marker')).toBe('from-template\nmarker');
    expect(await out('feat-a', 'cat /home/owner/marker; ls /home/owner')).toBe('a\nmarker');
    expect(await out('feat-b', 'cat /home/owner/marker')).toBe('b');

    const templates = await json<{ workspaces: Info[] }>('workspace', 'list', '--templates');
    expect(templates.workspaces.map((w) => [w.id, w.label])).toEqual([['tpl', 'team template']]);
    await ok('workspace', 'label', 'feat-a', 'login page');
    expect((await json<Info>('workspace', 'show', 'feat-a')).label).toBe('login page');
    await ok('workspace', 'label', 'feat-a', '--clear');
    expect((await json<Info>('workspace', 'show', 'feat-a')).label).toBeUndefined();

    // Removing the template leaves its clones whole.
    await ok('workspace', 'remove', 'tpl');
    await ok('workspace', 'stop', 'feat-a');
    expect(await out('feat-a', 'cat /home/owner/marker')).toBe('a');
  }, 600_000);

  it('a full disk is ENOSPC inside its workspace, and nothing else is touched', async () => {
    await ok('workspace', 'create', '--name', 'small', '--image', image, '--disk', '256Mi', '--memory', '256Mi');
    const fill = await sh('small', 'dd if=/dev/zero of=/home/owner/big bs=1M count=1024 2>&1; echo rc=$?');
    expect(fill.stdout).toMatch(/No space left on device/);
    expect(fill.stdout).toMatch(/rc=1/);
    // The workspace itself still works once space is freed.
    expect(await out('small', 'rm /home/owner/big && echo fine > /home/owner/after && cat /home/owner/after')).toBe('fine');
    expect(await out('feat-b', 'cat /home/owner/marker /home/owner/b')).toBe('b\nonly-b');
    await ok('workspace', 'stop', 'small');
  }, 300_000);

  it('the quota refuses, with the numbers, before anything is made', async () => {
    const usage = await json<{ totalBytes: number; quotaBytes: number; workspaces: { workspace: string; bytes: number; sharedBytes: number }[] }>('usage');
    expect(usage.quotaBytes).toBe(25 * 1024 ** 3);
    expect(usage.workspaces.find((w) => w.workspace === 'feat-a')?.sharedBytes).toBeGreaterThan(0);
    const config = env['CS_CONFIG'] as string;
    await writeFile(config, `workspaces:\n  quota: ${usage.totalBytes + 2 * 1024 ** 2}B\n`);
    try {
      const refused = await cs('workspace', 'create', '--name', 'over', '--image', image, '--disk', '10Gi');
      expect(refused.exitCode).not.toBe(0);
      expect(refused.stderr).toMatch(/creating over would exceed your workspace quota: your workspaces hold [\d.]+ MiB, this adds about [\d.]+ MiB, and the cap is [\d.]+ MiB/);
      expect(existsSync(join(env['CS_HOME'] as string, 'sandboxes', 'over'))).toBe(false);
      await writeFile(config, `workspaces:\n  quota: 1Mi\n`);
      const point = await cs('workspace', 'snapshots', 'create', 'small', '--name', 'p');
      expect(point.exitCode).not.toBe(0);
      expect(point.stderr).toMatch(/would exceed your workspace quota/);
      expect((await json<{ restorePoints: Point[] }>('workspace', 'snapshots', 'list', 'small')).restorePoints).toEqual([]);
      await writeFile(config, 'workspaces:\n  quota: lots\n');
      const broken = await cs('usage');
      expect(broken.exitCode).not.toBe(0);
      expect(broken.stderr).toMatch(/workspaces\.quota: must be a size/);
    } finally {
      await rm(config, { force: true });
    }
  }, 300_000);

  it('conflicting commands: a restore waits for nothing it would break, two restores serialise', async () => {
    await create('busy');
    await ok('workspace', 'snapshots', 'create', 'busy', '--name', 'clean');
    const long = startCs(['exec', '--workspace', 'busy', '--', 'sh', '-c', 'echo started > /home/owner/s; sleep 8; echo done'], { env, timeoutMs: 120_000 });
    let started = false;
    for (let i = 0; i < 600 && !started; i++) {
      started = await sh('busy', 'test -e /home/owner/s').then((r) => r.exitCode === 0);
      if (!started) await new Promise((r) => setTimeout(r, 100));
    }
    // The long command must be running, or the refusals below would prove nothing.
    expect(started, 'the long command never started').toBe(true);
    for (const force of [[], ['--force']]) {
      const refused = await cs('workspace', 'snapshots', 'restore', 'busy', 'clean', ...force);
      expect(refused.exitCode).not.toBe(0);
      expect(refused.stderr).toMatch(/commands are running in busy, and restoring would replace the disk under them: `sh -c echo started/);
    }
    const removal = await cs('workspace', 'remove', 'busy');
    expect(removal.exitCode).not.toBe(0);
    expect(removal.stderr).toMatch(/commands are running in busy/);
    expect((await long).stdout).toBe('done');

    await ok('workspace', 'stop', 'busy');
    const [r1, r2] = await Promise.all([cs('workspace', 'snapshots', 'restore', 'busy', 'clean'), cs('workspace', 'snapshots', 'restore', 'busy', 'clean')]);
    expect([r1.exitCode, r2.exitCode]).toEqual([0, 0]);
    // One top, one base: the second restore replaced the first's overlay, and nothing else is left behind.
    const files = await diskFiles('busy');
    expect(files.filter((f) => f.startsWith('base-'))).toHaveLength(1);
    expect(files.filter((f) => f.startsWith('layer-'))).toHaveLength(1);
    expect(await out('busy', 'ls /home/owner')).toBe('');
  }, 300_000);

  it('import --git clones into /workspace, records the commit, and clones again when the disk is lost', async () => {
    const repo = join(work, 'repo');
    const git = (...args: string[]) => execa('git', ['-C', repo, ...args], { env: { GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@e', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@e' } });
    await execa('git', ['init', '-q', '-b', 'main', repo]);
    await writeFile(join(repo, 'README'), 'v1\n');
    await git('add', '.');
    await git('commit', '-qm', 'one');
    await git('tag', 'v1');
    const v1 = (await git('rev-parse', 'HEAD')).stdout.trim();
    await writeFile(join(repo, 'README'), 'v2\n');
    await git('commit', '-qam', 'two');

    const missingRef = await cs('workspace', 'import', '--name', 'nope', '--git', repo, '--ref', 'v9', '--image', image);
    expect(missingRef.exitCode).not.toBe(0);
    expect(missingRef.stderr).toMatch(/has no branch or tag "v9"/);

    const imported = await json<Info>('workspace', 'import', '--name', 'repo', '--git', repo, '--ref', 'v1', '--image', image, '--disk', '512Mi', '--memory', '256Mi');
    expect(imported.origin?.git).toEqual({ url: repo, ref: 'v1', commit: v1, path: '/workspace' });
    expect(await out('repo', 'cat /workspace/README; stat -c %U /workspace/README; test -d /workspace/.git && echo git')).toBe('v1\nowner\ngit');

    // The disk is lost (deleted by hand): the next start makes a new one and the repository comes back.
    await ok('workspace', 'stop', 'repo');
    await rm(join(env['CS_HOME'] as string, 'sandboxes', 'repo', 'repo', 'disk'), { recursive: true });
    const started = await cs('workspace', 'start', 'repo');
    expect(started.exitCode, started.stderr).toBe(0);
    expect(started.stderr).toMatch(/the disk of repo\/repo is gone/);
    expect(await out('repo', 'cat /workspace/README')).toBe('v1');
  }, 600_000);
});
