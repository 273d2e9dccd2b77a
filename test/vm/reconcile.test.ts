/**
 * Reconcile, for real: definitions applied to running microVMs with `cs
 * apply`, followed by `cs reconcile --watch` and `--git` over real git
 * repositories. Each test checks what a user would: the running workspace
 * (its environment, its files, its daemons, its uptime), the root it boots
 * on, what `cs diff` and `cs sandbox list` say, and that nothing is lost.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importDirectory } from '../../src/snapshot/import-dir.js';
import { csClient, ensureBuilt, runCs, startCs, type Run } from '../helpers/cli.js';
import { buildTinyRoot, vmHome } from '../helpers/vm.js';

interface Sync {
  state: string;
  version?: string;
  reason?: string;
  held?: string[];
}
interface Listed {
  sandbox: string;
  workspace: string;
  status: string;
  pid?: number;
  ports: { name: string; hostPort: number; guestPort: number }[];
  sync: Sync;
}
interface Change {
  field: string;
  from?: string;
  to?: string;
  effect: string;
}
interface PlanJson {
  empty: boolean;
  sandboxes: { sandbox: string; action: string; reason?: string; workspaces: { workspace: string; action: string; changes: Change[]; reason?: string }[] }[];
  issues: { file: string; line: number; message: string }[];
}

/** Two versions of a tiny base image, told apart by /etc/image-version. */
async function importVersion(env: Record<string, string>, version: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'cs-rec-img-'));
  try {
    await buildTinyRoot(dir);
    await writeFile(join(dir, 'etc', 'image-version'), `${version}\n`);
    const reference = `localhost/test/recbase:${version}`;
    await importDirectory({ dir, reference, env });
    return reference;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function definition(options: { base: string; greeting: string; cpus?: number; extra?: string; workspaces?: string }): string {
  return `name: demo
workspaces:
  - name: dev
    base_snapshot: oci://${options.base}
    resources:
      memory: 256Mi
      disk: 512Mi
      cpus: ${options.cpus ?? 1}
    env:
      - GREETING=${options.greeting}
    system:
      files:
        - path: /etc/motd
          template: |
            greeting \${GREETING}
      daemons:
        - name: ticker
          run:
            cmd: while true; do echo "$GREETING" > /tmp/tick; sleep 0.2; done
${options.extra ?? ''}${options.workspaces ?? ''}`;
}

const SECOND = `  - name: aux
    base_snapshot: oci://localhost/test/recbase:v1
    resources:
      memory: 256Mi
      disk: 512Mi
`;

describe('reconcile: cs apply, cs diff, cs reconcile', () => {
  let home: Awaited<ReturnType<typeof vmHome>> | undefined;
  let env: Record<string, string>;
  let defs: string;
  let file: string;
  let v1: string;
  let v2: string;
  const { cs, ok, json } = csClient(() => env);
  const out = async (target: string, command: string, user = 'owner'): Promise<string> => {
    const result = await cs('exec', '-W', target, '--user', user, '--', 'sh', '-c', command);
    expect(result.exitCode, `${command}\n${result.stderr}`).toBe(0);
    return result.stdout;
  };
  const listed = async (target: string): Promise<Listed | undefined> =>
    (await json<{ workspaces: Listed[] }>('sandbox', 'list')).workspaces.find((w) => `${w.sandbox}/${w.workspace}` === target);
  const uptime = async (target: string): Promise<number> => Number((await out(target, 'cat /proc/uptime')).split(' ')[0]);

  beforeAll(async () => {
    await ensureBuilt('apply');
    home = await vmHome();
    env = home.env;
    v1 = await importVersion(env, 'v1');
    v2 = await importVersion(env, 'v2');
    defs = await mkdtemp(join(tmpdir(), 'cs-rec-defs-'));
    file = join(defs, 'demo.yaml');
  }, 600_000);

  afterAll(async () => {
    if (home) {
      await cs('sandbox', 'remove', 'demo');
      await cs('sandbox', 'remove', 'other');
      await cs('sandbox', 'remove', 'gitops');
      await home.cleanup();
    }
    if (defs) await rm(defs, { recursive: true, force: true });
  }, 300_000);

  it('creates what is defined, then an env edit reaches the running workspace in place', async () => {
    await writeFile(file, definition({ base: v1, greeting: 'hello' }));
    const plan = await json<PlanJson>('diff', '-f', defs);
    expect(plan.sandboxes).toMatchObject([{ sandbox: 'demo', action: 'create' }]);
    await ok('apply', '-f', defs);
    expect(await out('demo/dev', 'cat /etc/motd; for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /tmp/tick ] && break; sleep 0.2; done; cat /tmp/tick')).toBe('greeting hello\nhello');
    // Work the user does in the workspace.
    await out('demo/dev', 'echo my notes > ~/notes.txt');
    const before = await listed('demo/dev');
    expect(before?.sync.state).toBe('in-sync');
    const up0 = await uptime('demo/dev');

    await writeFile(file, definition({ base: v1, greeting: 'bonjour' }));
    const diff = await ok('diff', '-f', defs);
    expect(diff.stdout).toContain('env.GREETING: hello -> bonjour');
    expect(diff.stdout).toContain('applied in place, no restart');
    const result = await ok('apply', '-f', defs);
    expect(result.stderr).toMatch(/demo\/dev: live update \(wrote \/etc\/motd; restarted daemon ticker\)/);

    expect(await out('demo/dev', 'echo $GREETING; cat /etc/motd; sleep 0.5; cat /tmp/tick; cat ~/notes.txt')).toBe('bonjour\ngreeting bonjour\nbonjour\nmy notes');
    // No reboot: the same QEMU, and the guest's uptime went on.
    const after = await listed('demo/dev');
    expect(after?.pid).toBe(before?.pid);
    expect(await uptime('demo/dev')).toBeGreaterThan(up0);
    // The old daemon was stopped, not left beside the new one.
    expect((await out('demo/dev', 'ps -o args | grep -c "^/bin/sh -c while true"')).trim()).toBe('1');
    expect(after?.sync.state).toBe('in-sync');
    expect(after?.sync.version).not.toBe(before?.sync.version);
    // Applying again finds nothing to do.
    expect((await ok('apply', '-f', defs)).stdout).toContain('Nothing to do');
  }, 600_000);

  it('adds a port and a daemon in place: the host reaches the new service', async () => {
    const extra = `    ports:
      - name: web
        port: 8080
        protocol: HTTP
`;
    const daemon = definition({ base: v1, greeting: 'bonjour', extra }).replace(
      '      daemons:\n',
      '      daemons:\n        - name: web\n          run:\n            cmd: mkdir -p ~/www && echo served > ~/www/index.html && exec httpd -f -p 8080 -h ~/www\n',
    );
    await writeFile(file, daemon);
    const pid = (await listed('demo/dev'))?.pid;
    await ok('apply', '-f', defs);
    const ws = await listed('demo/dev');
    expect(ws?.pid).toBe(pid);
    const port = ws?.ports.find((p) => p.name === 'web');
    expect(port?.guestPort).toBe(8080);
    let body = '';
    for (let i = 0; i < 50 && body !== 'served\n'; i++) {
      body = await fetch(`http://127.0.0.1:${port?.hostPort}/`).then((r) => r.text(), () => '');
      if (body !== 'served\n') await new Promise((r) => setTimeout(r, 200));
    }
    expect(body).toBe('served\n');
    // Dropping the port removes the forward from the running QEMU.
    await writeFile(file, definition({ base: v1, greeting: 'bonjour' }));
    await ok('apply', '-f', defs);
    expect((await listed('demo/dev'))?.ports).toEqual([]);
    const gone = await fetch(`http://127.0.0.1:${port?.hostPort}/`).then(() => 'answered', () => 'refused');
    expect(gone).toBe('refused');
  }, 600_000);

  it('a new checkout is cloned in place, and a manifest edited in the workspace has its daemons applied again', async () => {
    const repo = await mkdtemp(join(tmpdir(), 'cs-rec-repo-'));
    try {
      await execa('git', ['init', '-q', '-b', 'main', repo]);
      await execa('mkdir', ['-p', join(repo, '.sandbox')]);
      await writeFile(join(repo, '.sandbox', 'manifest.yaml'), 'daemons:\n  beacon:\n    run:\n      cmd: while true; do echo v1 > /tmp/beacon; sleep 0.2; done\n');
      await execa('git', ['-C', repo, 'add', '-A']);
      await execa('git', ['-C', repo, '-c', 'user.email=t@example.com', '-c', 'user.name=t', 'commit', '-qm', 'manifest']);
      const checkout = `    checkouts:\n      - path: app\n        repo:\n          git: ${repo}\n`;
      await writeFile(file, definition({ base: v1, greeting: 'bonjour', extra: checkout }));
      const pid = (await listed('demo/dev'))?.pid;
      const applied = await ok('apply', '-f', defs);
      expect(applied.stderr).toContain(`cloned ${repo} into /home/owner/app`);
      expect(await out('demo/dev', 'sleep 0.5; cat /tmp/beacon; ls ~/app/.sandbox')).toBe('v1\nmanifest.yaml');
      // The user edits the repo's manifest in their workspace: the next apply restarts that daemon only.
      await out('demo/dev', 'sed -i s/v1/v2/ ~/app/.sandbox/manifest.yaml');
      const diff = await ok('diff', '-f', defs);
      expect(diff.stdout).toContain('a repo manifest was edited in the workspace');
      const again = await ok('apply', '-f', defs);
      expect(again.stderr).toMatch(/restarted daemon beacon/);
      expect(again.stderr).not.toMatch(/daemon ticker/);
      expect(await out('demo/dev', 'sleep 0.5; cat /tmp/beacon')).toBe('v2');
      expect((await listed('demo/dev'))?.pid).toBe(pid);
      // Dropping the checkout from the definition leaves the user's folder.
      await writeFile(file, definition({ base: v1, greeting: 'bonjour' }));
      await ok('apply', '-f', defs);
      expect(await out('demo/dev', 'cat ~/app/.sandbox/manifest.yaml | grep -c v2')).toBe('1');
    } finally {
      await rm(repo, { recursive: true, force: true });
    }
  }, 600_000);

  it('a daemon that ignores TERM is killed before its new version starts', async () => {
    const stubborn = (word: string): string =>
      definition({ base: v1, greeting: 'bonjour' }).replace(
        '      daemons:\n',
        `      daemons:\n        - name: stubborn\n          run:\n            cmd: trap "" TERM; while true; do echo ${word} > /tmp/stubborn; sleep 0.2; done\n`,
      );
    await writeFile(file, stubborn('first'));
    await ok('apply', '-f', defs);
    await writeFile(file, stubborn('second'));
    await ok('apply', '-f', defs);
    expect(await out('demo/dev', 'sleep 0.5; cat /tmp/stubborn; ps -o args | grep -c "^/bin/sh -c trap"')).toBe('second\n1');
    await writeFile(file, definition({ base: v1, greeting: 'bonjour' }));
    await ok('apply', '-f', defs);
    expect(await out('demo/dev', 'ps -o args | grep -c "^/bin/sh -c trap" || true')).toBe('0');
  }, 300_000);

  it('an invalid definition changes nothing and says where it is wrong', async () => {
    const pid = (await listed('demo/dev'))?.pid;
    const good = await readFile(file, 'utf8');
    await writeFile(file, good.replace('GREETING=bonjour', 'GREETING=broken').replace('cpus: 1', 'cpus: [1'));
    const result = await cs('apply', '-f', defs);
    expect(result.exitCode).toBe(3);
    expect(result.stdout).toMatch(new RegExp(`${file}:\\d+:\\d+`));
    const ws = await listed('demo/dev');
    expect(ws?.pid).toBe(pid);
    expect(ws?.sync.state).toBe('failed');
    expect(ws?.sync.reason).toMatch(/invalid, so its last good spec stays applied/);
    expect(await out('demo/dev', 'echo $GREETING')).toBe('bonjour');
    await writeFile(file, good);
    await ok('apply', '-f', defs);
    expect((await listed('demo/dev'))?.sync.state).toBe('in-sync');
  }, 300_000);

  it('a new base snapshot refreshes the root; /home survives, a restore point keeps the rest', async () => {
    await out('demo/dev', 'echo system change > /etc/mine', 'root');
    expect(await out('demo/dev', 'cat /etc/image-version')).toBe('v1');
    await writeFile(file, definition({ base: v2, greeting: 'bonjour', cpus: 2 }));
    const plan = await json<PlanJson>('diff', '-f', defs);
    const changes = plan.sandboxes[0]?.workspaces[0]?.changes ?? [];
    expect(changes).toContainEqual({ field: 'base_snapshot', from: `oci://${v1}`, to: `oci://${v2}`, effect: 'refresh-root' });
    expect(changes).toContainEqual({ field: 'resources.cpus', from: '1', to: '2', effect: 'restart' });
    await ok('apply', '-f', defs);
    expect(await out('demo/dev', 'cat /etc/image-version; nproc; cat ~/notes.txt; cat /etc/motd')).toBe('v2\n2\nmy notes\ngreeting bonjour');
    expect((await cs('exec', '-W', 'demo/dev', '--', 'cat', '/etc/mine')).exitCode).not.toBe(0);
    const points = await json<{ restorePoints: { name: string }[] }>('workspace', 'snapshots', 'list', 'demo/dev');
    expect(points.restorePoints.map((p) => p.name)).toContain('before-root-1');
    // The point brings back the disk with the root it was used on: the old base and the change outside /home.
    await ok('workspace', 'snapshots', 'restore', 'demo/dev', 'before-root-1', '--force');
    expect(await out('demo/dev', 'cat /etc/image-version; cat /etc/mine; cat ~/notes.txt')).toBe('v1\nsystem change\nmy notes');
    // The definition still says v2: the next apply refreshes again, keeping a point of what was written since.
    await ok('apply', '-f', defs);
    expect(await out('demo/dev', 'cat /etc/image-version; cat ~/notes.txt')).toBe('v2\nmy notes');
    const after = await json<{ restorePoints: { name: string }[] }>('workspace', 'snapshots', 'list', 'demo/dev');
    expect(after.restorePoints.map((p) => p.name).filter((n) => n.startsWith('before-root-1'))).toHaveLength(2);
  }, 600_000);

  it('a workspace removed from its definition is kept without --prune and removed with it', async () => {
    await writeFile(file, definition({ base: v2, greeting: 'bonjour', cpus: 2, workspaces: SECOND }));
    await ok('apply', '-f', defs);
    expect(await out('demo/aux', 'cat /etc/image-version')).toBe('v1');
    await writeFile(file, definition({ base: v2, greeting: 'bonjour', cpus: 2 }));
    // The file changed (dev is brought to its new version); aux is only reported.
    const kept = await ok('apply', '-f', defs);
    expect(kept.stderr).not.toMatch(/remove/);
    const plan = await json<PlanJson>('diff', '-f', defs);
    expect(plan.sandboxes[0]?.workspaces.find((w) => w.workspace === 'aux')).toMatchObject({ action: 'keep', reason: expect.stringContaining('--prune') });
    expect(await listed('demo/aux')).toBeDefined();
    await ok('apply', '-f', defs, '--prune');
    expect(await listed('demo/aux')).toBeUndefined();
    expect(await listed('demo/dev')).toBeDefined();
  }, 600_000);

  it('one failing workspace does not hold up the others, and ends failed with the reason', async () => {
    const broken = join(defs, 'other.yaml');
    await writeFile(broken, 'workspaces:\n  - name: w\n    base_snapshot: no-such-snapshot\n');
    await writeFile(file, definition({ base: v2, greeting: 'salut', cpus: 2 }));
    const result = await cs('apply', '-f', defs, '--json');
    expect(result.exitCode).toBe(5);
    const parsed = JSON.parse(result.stdout) as { failed: { target: string; reason: string }[] };
    expect(parsed.failed).toEqual([{ target: 'other', reason: expect.stringMatching(/no-such-snapshot.*not a snapshot/) }]);
    expect(await out('demo/dev', 'echo $GREETING')).toBe('salut');
    await rm(broken);
  }, 300_000);

  it('kill -9 in the middle of an apply, then apply again: it converges and nothing is lost', async () => {
    await writeFile(file, definition({ base: v1, greeting: 'salut', cpus: 2 }));
    const child = startCs(['apply', '-f', defs], { env, timeoutMs: 300_000 });
    let seen = '';
    await new Promise<void>((resolve) => {
      child.stderr?.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        // The workspace is being stopped for its new root: the worst moment to die.
        if (seen.includes('demo/dev: root')) resolve();
      });
      void child.then(() => resolve(), () => resolve());
    });
    await new Promise((r) => setTimeout(r, 300));
    child.kill('SIGKILL');
    await child.catch(() => undefined);
    const interrupted = await listed('demo/dev');
    expect(['interrupted', 'in-sync', 'out-of-date']).toContain(interrupted?.sync.state);
    await ok('apply', '-f', defs);
    expect(await out('demo/dev', 'cat /etc/image-version; cat ~/notes.txt')).toBe('v1\nmy notes');
    const ws = await listed('demo/dev');
    expect(ws?.status).toBe('running');
    expect(ws?.sync.state).toBe('in-sync');
    expect((await ok('apply', '-f', defs)).stdout).toContain('Nothing to do');
  }, 600_000);

  it('one reconciler per data directory; --watch applies a saved file', async () => {
    const watcher = startCs(['reconcile', '--watch', defs, '--resync', '1m'], { env, timeoutMs: 300_000 });
    try {
      let log = '';
      watcher.stderr?.on('data', (c: Buffer) => (log += c.toString()));
      for (let i = 0; i < 100 && !log.includes('start:'); i++) await new Promise((r) => setTimeout(r, 100));
      const second = await cs('apply', '-f', defs);
      expect(second.exitCode).toBe(3);
      expect(second.stderr).toMatch(/another reconciler is running: process \d+ \(cs reconcile --watch/);
      // An editor's atomic save: write beside, rename over.
      await writeFile(`${file}.tmp`, definition({ base: v1, greeting: 'watched', cpus: 2 }));
      await execa('mv', [`${file}.tmp`, file]);
      let tick = '';
      for (let i = 0; i < 100 && tick !== 'watched'; i++) {
        tick = (await cs('exec', '-W', 'demo/dev', '--', 'cat', '/tmp/tick')).stdout;
        if (tick !== 'watched') await new Promise((r) => setTimeout(r, 100));
      }
      expect(tick).toBe('watched');
    } finally {
      watcher.kill('SIGINT');
      await watcher.catch(() => undefined);
    }
  }, 300_000);

  it('follows a git repository through three commits', async () => {
    const repo = await mkdtemp(join(tmpdir(), 'cs-rec-git-'));
    const git = (...args: string[]) => execa('git', ['-C', repo, '-c', 'user.email=t@example.com', '-c', 'user.name=t', ...args]);
    const commit = async (yaml: string, message: string): Promise<string> => {
      await writeFile(join(repo, 'sandboxes', 'gitops.yaml'), yaml);
      await git('add', '-A');
      await git('commit', '-qm', message);
      return (await git('rev-parse', 'HEAD')).stdout.trim();
    };
    await execa('git', ['init', '-q', '-b', 'main', repo]);
    await execa('mkdir', ['-p', join(repo, 'sandboxes')]);
    const yaml = (greeting: string, more = ''): string => definition({ base: v1, greeting }).replace('name: demo', 'name: gitops') + more;
    const c1 = await commit(yaml('one'), 'first');
    const follower = startCs(['reconcile', '--git', repo, '--branch', 'main', '--path', 'sandboxes', '--interval', '1s'], { env, timeoutMs: 500_000 });
    const atCommit = async (sha: string): Promise<void> => {
      for (let i = 0; i < 600; i++) {
        const ws = await listed('gitops/dev');
        if (ws?.sync.state === 'in-sync' && ws.sync.version === sha.slice(0, 12) && ws.status === 'running') return;
        await new Promise((r) => setTimeout(r, 250));
      }
      throw new Error(`gitops/dev never reached commit ${sha}`);
    };
    try {
      await atCommit(c1);
      expect(await out('gitops/dev', 'echo $GREETING')).toBe('one');
      await out('gitops/dev', 'echo kept > ~/mine');
      const c2 = await commit(yaml('two'), 'second');
      await atCommit(c2);
      expect(await out('gitops/dev', 'echo $GREETING; cat ~/mine')).toBe('two\nkept');
      const c3 = await commit(yaml('three', SECOND), 'third');
      await atCommit(c3);
      for (let i = 0; i < 200 && (await listed('gitops/aux'))?.sync.version !== c3.slice(0, 12); i++) await new Promise((r) => setTimeout(r, 250));
      expect((await listed('gitops/aux'))?.sync.version).toBe(c3.slice(0, 12));
      expect(await out('gitops/dev', 'echo $GREETING; cat ~/mine')).toBe('three\nkept');
    } finally {
      follower.kill('SIGINT');
      await follower.catch(() => undefined);
      await rm(repo, { recursive: true, force: true });
    }
  }, 600_000);
});
