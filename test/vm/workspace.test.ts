/**
 * Workspaces booted for real: QEMU microvm (TCG here), Debian's cloud
 * kernel, cs's initramfs and agent, a tiny busybox image from the local
 * store. Everything goes through the `cs` binary as a user would run it.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, runCs } from '../helpers/cli.js';
import { freePort } from '../../src/workspace/ports.js';
import { importTinyImage, vmHome, writeDefinition } from '../helpers/vm.js';

interface Summary {
  sandbox: string;
  workspace: string;
  status: string;
  error?: string;
  ports: { name: string; guestPort: number; hostPort: number }[];
  pid?: number;
}

function httpGet(port: number, path = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  });
}

/** A git repo on the host, with a repo manifest whose hooks leave traces. */
async function makeRepo(dir: string): Promise<string> {
  const repo = join(dir, 'app-repo');
  await mkdir(join(repo, '.sandbox'), { recursive: true });
  await mkdir(join(repo, 'www'), { recursive: true });
  await writeFile(join(repo, 'www', 'index.html'), 'served from the workspace\n');
  await writeFile(join(repo, 'README'), 'app repo\n');
  await writeFile(
    join(repo, '.sandbox', 'manifest.yaml'),
    [
      'env:',
      '  - APP_MODE=test',
      'hooks:',
      '  post-checkout:',
      '    cmd: echo "post-checkout ran as $(id -un) in $(pwd) mode=$APP_MODE" > hook.txt',
      '  build:',
      '    cmd: echo built >> hook.txt',
      'daemons:',
      '  web:',
      '    run:',
      '      cmd: exec busybox httpd -f -p 18080 -h www',
      '',
    ].join('\n'),
  );
  const git = (...args: string[]) => execFileSync('git', ['-C', repo, ...args], { env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com' } });
  git('init', '-q', '-b', 'main');
  git('add', '.');
  git('commit', '-q', '-m', 'first');
  return repo;
}

describe('a workspace from a tiny image', () => {
  let home: Awaited<ReturnType<typeof vmHome>>;
  let work: string;
  let file: string;
  let webPort: number;

  beforeAll(async () => {
    await ensureBuilt('sandbox/create');
    home = await vmHome();
    work = await mkdtemp(join(tmpdir(), 'cs-ws-'));
    await importTinyImage(home.env);
    const repo = await makeRepo(work);
    webPort = await freePort();
    file = await writeDefinition(
      work,
      'tiny',
      [
        'name: tiny',
        'env:',
        '  - GREETING=hello',
        'workspaces:',
        '  - name: dev',
        '    base_snapshot: oci://localhost/test/tiny:1',
        '    resources: { memory: 256Mi, disk: 1Gi }',
        '    env:',
        '      - WHO=${GREETING} world',
        '    checkouts:',
        '      - path: src/app',
        '        repo:',
        `          git: ${repo}`,
        '    ports:',
        '      - name: web',
        `        port: 18080`,
        '        protocol: HTTP',
        '    system:',
        '      files:',
        '        - path: /etc/cs-test/config',
        '          owner: owner',
        '          mode: "0600"',
        '          template: |',
        '            who=${WHO}',
        '        - path: /usr/local/bin/app-readme',
        '          symlink: /home/owner/src/app/README',
        '    probes:',
        '      readiness:',
        '        - http_get: { port: 18080, path: /index.html }',
        '',
      ].join('\n'),
    );
    void webPort;
  }, 300_000);

  afterAll(async () => {
    await runCs(['sandbox', 'remove', 'tiny'], { env: home.env, timeoutMs: 60_000 });
    await home?.cleanup();
    await rm(work, { recursive: true, force: true });
  });

  let summary: Summary;

  it('creates and boots it, runs its start-up steps, and reports it running', async () => {
    const result = await runCs(['sandbox', 'create', '-f', file, '--wait', '--json'], { env: home.env, timeoutMs: 240_000 });
    expect(result.stderr).not.toContain('Error');
    expect(result.exitCode).toBe(0);
    const out = JSON.parse(result.stdout) as { sandbox: string; workspaces: Summary[] };
    expect(out.sandbox).toBe('tiny');
    summary = out.workspaces[0] as Summary;
    expect(summary.status).toBe('running');
    expect(summary.ports[0]?.guestPort).toBe(18080);
  }, 300_000);

  it('runs commands with separate stdout and stderr and passes the exit code through', async () => {
    const result = await runCs(['exec', '-W', 'tiny/dev', '--', 'sh', '-c', 'echo to-out; echo to-err >&2; exit 7'], { env: home.env });
    expect(result.exitCode).toBe(7);
    expect(result.stdout).toBe('to-out');
    expect(result.stderr).toBe('to-err');
  });

  it('pipes stdin and runs as the owner in their home with the workspace env', async () => {
    const upper = await runCs(['exec', '-W', 'tiny/dev', '--', 'tr', 'a-z', 'A-Z'], { env: home.env, input: 'piped text\n' });
    expect(upper.stdout).toBe('PIPED TEXT');
    const who = await runCs(['exec', '-W', 'tiny/dev', '--', 'sh', '-c', 'id -un; pwd; echo "$WHO|$GREETING|$CS_SANDBOX/$CS_WORKSPACE"'], { env: home.env });
    expect(who.stdout).toBe('owner\n/home/owner\nhello world|hello|tiny/dev');
    const root = await runCs(['exec', '-W', 'tiny/dev', '--user', 'root', '--', 'id', '-u'], { env: home.env });
    expect(root.stdout).toBe('0');
  });

  it('writes system files with owner, mode and template, and symlinks', async () => {
    const result = await runCs(['exec', '-W', 'tiny/dev', '--user', 'root', '--', 'sh', '-c', 'stat -c "%U %a" /etc/cs-test/config; cat /etc/cs-test/config; readlink /usr/local/bin/app-readme'], { env: home.env });
    expect(result.stdout).toBe('owner 600\nwho=hello world\n/home/owner/src/app/README');
  });

  it('clones checkouts as the owner and runs the repo hooks in order', async () => {
    const result = await runCs(['exec', '-W', 'tiny/dev', '--', 'sh', '-c', 'stat -c %U src/app/README; cat src/app/hook.txt; test -d src/app/.git && echo has-git'], { env: home.env });
    expect(result.stdout).toBe('owner\npost-checkout ran as owner in /home/owner/src/app mode=test\nbuilt\nhas-git');
  });

  it('forwards the declared port to the daemon the repo manifest starts', async () => {
    const port = summary.ports[0]?.hostPort as number;
    const response = await httpGet(port, '/index.html');
    expect(response.status).toBe(200);
    expect(response.body).toBe('served from the workspace\n');
  });

  it('adds a port forward on demand', async () => {
    await runCs(['exec', '-W', 'tiny/dev', '--', 'sh', '-c', 'mkdir -p extra && echo extra-page > extra/index.html && busybox httpd -p 19191 -h extra'], { env: home.env });
    const local = await freePort();
    const added = await runCs(['port-forward', '-W', 'tiny/dev', `${local}:19191`, '--json'], { env: home.env });
    expect(added.exitCode).toBe(0);
    expect(JSON.parse(added.stdout).mapping.hostPort).toBe(local);
    expect((await httpGet(local)).body).toBe('extra-page\n');
    const bad = await runCs(['port-forward', '-W', 'tiny/dev', 'eighty'], { env: home.env });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain('LOCAL:REMOTE');
  });

  it('keeps files across suspend and resume, and does not run first-start steps again', async () => {
    const write = await runCs(['exec', '-W', 'tiny/dev', '--', 'sh', '-c', 'echo survived > notes.txt; echo extra >> src/app/hook.txt'], { env: home.env });
    expect(write.exitCode).toBe(0);
    const suspend = await runCs(['sandbox', 'suspend', 'tiny', '--json'], { env: home.env, timeoutMs: 120_000 });
    expect(suspend.exitCode).toBe(0);
    expect((JSON.parse(suspend.stdout) as { workspaces: Summary[] }).workspaces[0]?.status).toBe('suspended');
    // A root image that went away (deleted by hand here) is built again when the workspace starts.
    const record = JSON.parse(await readFile(join(home.home, 'sandboxes', 'tiny', 'dev', 'workspace.json'), 'utf8')) as { lowers: string[] };
    const image = record.lowers[0] as string;
    await rm(image);
    // exec starts a suspended workspace for the command, and says so.
    const down = await runCs(['exec', '-W', 'tiny/dev', '--', 'true'], { env: home.env, timeoutMs: 240_000 });
    expect(down.exitCode, down.stderr).toBe(0);
    expect(down.stderr).toContain('cs: workspace tiny/dev is stopped; starting it');
    expect(down.stderr).toContain('the root image of tiny/dev is missing; building it again');
    expect(existsSync(image)).toBe(true);
    // resume of a running workspace changes nothing.
    const resume = await runCs(['sandbox', 'resume', 'tiny', '--wait', '--json'], { env: home.env, timeoutMs: 240_000 });
    expect(resume.exitCode).toBe(0);
    const read = await runCs(['exec', '-W', 'tiny/dev', '--', 'sh', '-c', 'cat notes.txt; cat src/app/hook.txt'], { env: home.env });
    // The hooks did not run again: hook.txt is as the user left it.
    expect(read.stdout).toBe('survived\npost-checkout ran as owner in /home/owner/src/app mode=test\nbuilt\nextra');
    // The daemon came back with the workspace.
    const port = summary.ports[0]?.hostPort as number;
    expect((await httpGet(port, '/index.html')).status).toBe(200);
  }, 300_000);

  it('shows the start-up log and a daemon log', async () => {
    const log = await runCs(['log', '-W', 'tiny/dev'], { env: home.env });
    expect(log.stdout).toContain('==> checkout src/app');
    expect(log.stdout).toContain('==> daemon web');
    const consoleLog = await runCs(['log', '-W', 'tiny/dev', '--console'], { env: home.env });
    expect(consoleLog.stdout).toContain('cs-init');
  });

  it('reports a killed QEMU as crashed, with the console tail', async () => {
    const show = await runCs(['sandbox', 'show', 'tiny', '--json'], { env: home.env });
    const pid = (JSON.parse(show.stdout) as { workspaces: Summary[] }).workspaces[0]?.pid as number;
    expect(pid).toBeGreaterThan(0);
    process.kill(pid, 'SIGKILL');
    let status = '';
    let error = '';
    for (let i = 0; i < 50 && status !== 'crashed'; i++) {
      await new Promise((r) => setTimeout(r, 200));
      const again = JSON.parse((await runCs(['sandbox', 'show', 'tiny', '--json'], { env: home.env })).stdout) as { workspaces: Summary[] };
      status = again.workspaces[0]?.status ?? '';
      error = again.workspaces[0]?.error ?? '';
    }
    expect(status).toBe('crashed');
    expect(error).toContain('SIGKILL');
    const human = await runCs(['sandbox', 'show', 'tiny'], { env: home.env });
    expect(human.stdout).toContain('crashed');
    // And it can be started again from its disk.
    const resume = await runCs(['sandbox', 'resume', 'tiny', '--json'], { env: home.env, timeoutMs: 240_000 });
    expect(resume.exitCode).toBe(0);
    const read = await runCs(['exec', '-W', 'tiny/dev', '--', 'cat', 'notes.txt'], { env: home.env });
    expect(read.stdout).toBe('survived');
  }, 300_000);

  it('reports a killed supervisor as crashed, and resumes without a second QEMU on the disk', async () => {
    const run = JSON.parse(await readFile(join(home.home, 'sandboxes', 'tiny', 'dev', 'run.json'), 'utf8')) as { supervisorPid: number; qemuPid: number };
    process.kill(run.supervisorPid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const show = JSON.parse((await runCs(['sandbox', 'show', 'tiny', '--json'], { env: home.env })).stdout) as { workspaces: Summary[] };
    expect(show.workspaces[0]?.status).toBe('crashed');
    expect(show.workspaces[0]?.error).toContain('supervisor is gone');
    const resume = await runCs(['sandbox', 'resume', 'tiny', '--json'], { env: home.env, timeoutMs: 240_000 });
    expect(resume.stderr).not.toContain('Error');
    expect(resume.exitCode).toBe(0);
    const read = await runCs(['exec', '-W', 'tiny/dev', '--', 'cat', 'notes.txt'], { env: home.env });
    expect(read.stdout).toBe('survived');
    const { stdout } = await execa('pgrep', ['-f', 'qemu-system'], { reject: false });
    const ours = [];
    for (const pid of stdout.split('\n').filter(Boolean)) {
      const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => '');
      if (cwd.endsWith('/sandboxes/tiny/dev')) ours.push(pid);
    }
    expect(ours).toHaveLength(1);
    expect(ours).not.toContain(String(run.qemuPid));
  }, 300_000);
});

describe('workspaces that cannot start', () => {
  let home: Awaited<ReturnType<typeof vmHome>>;
  let work: string;

  beforeAll(async () => {
    await ensureBuilt('sandbox/create');
    home = await vmHome();
    work = await mkdtemp(join(tmpdir(), 'cs-ws-bad-'));
    await importTinyImage(home.env);
  }, 300_000);

  afterAll(async () => {
    for (const name of ['hookfail', 'muslws']) await runCs(['sandbox', 'remove', name], { env: home.env, timeoutMs: 60_000 });
    await home?.cleanup();
    await rm(work, { recursive: true, force: true });
  });

  it('reports a failing hook with its output and exit code', async () => {
    const file = await writeDefinition(
      work,
      'hookfail',
      [
        'workspaces:',
        '  - name: dev',
        '    base_snapshot: oci://localhost/test/tiny:1',
        '    resources: { memory: 256Mi, disk: 1Gi }',
        '    lifecycle:',
        '      on_create:',
        '        run:',
        '          cmd: \'echo "setting up"; echo "boom: no database" >&2; exit 7\'',
        '',
      ].join('\n'),
    );
    const result = await runCs(['sandbox', 'create', '-f', file, '--wait'], { env: home.env, timeoutMs: 240_000 });
    expect(result.exitCode).toBe(5);
    expect(result.stderr).toContain('on_create hook failed with exit code 7');
    expect(result.stderr).toContain('boom: no database');
    const show = JSON.parse((await runCs(['sandbox', 'show', 'hookfail', '--json'], { env: home.env })).stdout) as { workspaces: Summary[] };
    expect(show.workspaces[0]?.status).toBe('failed');
    // The VM stays up so the user can look inside.
    const look = await runCs(['exec', '-W', 'hookfail/dev', '--', 'echo', 'still reachable'], { env: home.env });
    expect(look.stdout).toBe('still reachable');
  }, 300_000);

  it('refuses a musl (Alpine) base with a clear error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cs-musl-'));
    const { buildTinyRoot } = await import('../helpers/vm.js');
    await buildTinyRoot(dir);
    await mkdir(join(dir, 'lib'), { recursive: true });
    await writeFile(join(dir, 'lib', 'ld-musl-x86_64.so.1'), '');
    await writeFile(join(dir, 'etc', 'alpine-release'), '3.20.0\n');
    const { importDirectory } = await import('../../src/snapshot/import-dir.js');
    await importDirectory({ dir, reference: 'localhost/test/alpine-like:1', env: home.env });
    await rm(dir, { recursive: true, force: true });
    const file = await writeDefinition(work, 'muslws', 'workspaces:\n  - name: dev\n    base_snapshot: oci://localhost/test/alpine-like:1\n    resources: { memory: 256Mi, disk: 1Gi }\n');
    const result = await runCs(['sandbox', 'create', '-f', file, '--wait'], { env: home.env, timeoutMs: 240_000 });
    expect(result.exitCode).toBe(5);
    expect(result.stderr).toContain('musl libc (Alpine)');
  }, 300_000);

  it('names the missing image and leaves nothing behind', async () => {
    const file = await writeDefinition(work, 'noimage', 'workspaces:\n  - name: dev\n    base_snapshot: oci://localhost:1/nothing/here:1\n');
    const result = await runCs(['sandbox', 'create', '-f', file], { env: home.env, timeoutMs: 120_000 });
    expect(result.exitCode).not.toBe(0);
    expect(result.stderr).toContain('localhost:1/nothing/here:1');
    const list = JSON.parse((await runCs(['sandbox', 'list', '--json'], { env: home.env })).stdout) as { workspaces: Summary[] };
    expect(list.workspaces.map((w) => w.sandbox)).not.toContain('noimage');
    const again = await runCs(['sandbox', 'create', '-f', file], { env: home.env, timeoutMs: 120_000 });
    expect(again.stderr).not.toContain('already exists');
  }, 180_000);

  it('refuses a second sandbox with the same name, and unknown targets', async () => {
    const file = await writeDefinition(work, 'twice', 'workspaces:\n  - name: dev\n    base_snapshot: oci://localhost/test/tiny:1\n    resources: { memory: 256Mi, disk: 1Gi }\n');
    const first = await runCs(['sandbox', 'create', '-f', file], { env: home.env, timeoutMs: 240_000 });
    expect(first.exitCode).toBe(0);
    // Without --wait, create returns once the VM answers; a command run straight away waits for the owner account.
    const whoami = await runCs(['exec', '-W', 'twice/dev', '--', 'id', '-un'], { env: home.env, timeoutMs: 120_000 });
    expect(whoami.stdout, whoami.stderr).toBe('owner');
    // The words after `--` run as typed, also through oclif (-it is left to it): none moves because it is also a flag's value.
    const echoed = await runCs(['exec', '-W', 'twice/dev', '-u', 'root', '-it', '--', 'echo', 'root', 'twice/dev'], { env: home.env, timeoutMs: 60_000 });
    expect(echoed.stdout, echoed.stderr).toBe('root twice/dev');
    const second = await runCs(['sandbox', 'create', '-f', file], { env: home.env, timeoutMs: 60_000 });
    expect(second.exitCode).toBe(3);
    expect(second.stderr).toContain('sandbox "twice" already exists');
    const unknown = await runCs(['exec', '-W', 'twice/nope', '--', 'true'], { env: home.env });
    expect(unknown.exitCode).toBe(3);
    expect(unknown.stderr).toContain('has no workspace "nope"');
    const removed = await runCs(['sandbox', 'remove', 'twice'], { env: home.env, timeoutMs: 60_000 });
    expect(removed.exitCode).toBe(0);
    const { stdout } = await execa('pgrep', ['-af', 'qemu-system'], { reject: false });
    expect(stdout.split('\n').filter((l) => l.includes(`${home.home}/sandboxes/twice/`))).toEqual([]);
  }, 300_000);
});

describe('two workspaces of one sandbox', () => {
  let home: Awaited<ReturnType<typeof vmHome>>;
  let work: string;

  beforeAll(async () => {
    await ensureBuilt('sandbox/create');
    home = await vmHome();
    work = await mkdtemp(join(tmpdir(), 'cs-ws-pair-'));
    await importTinyImage(home.env);
  }, 300_000);

  afterAll(async () => {
    await runCs(['sandbox', 'remove', 'pair'], { env: home.env, timeoutMs: 60_000 });
    await home?.cleanup();
    await rm(work, { recursive: true, force: true });
  });

  it('waits for the workspace it names in wait_for, and reaches it through port_forward_rules', async () => {
    const file = await writeDefinition(
      work,
      'pair',
      [
        'workspaces:',
        '  - name: db',
        '    base_snapshot: oci://localhost/test/tiny:1',
        '    resources: { memory: 256Mi, disk: 1Gi }',
        '    ports:',
        '      - { name: data, port: 5050, protocol: TCP }',
        '    system:',
        '      files:',
        '        - { path: /srv/data/index.html, content: "from the db workspace\\n" }',
        '      daemons:',
        '        - { name: serve, run: { cmd: exec busybox httpd -f -p 5050 -h /srv/data } }',
        '    probes:',
        '      readiness:',
        '        - tcp_port: 5050',
        '  - name: app',
        '    base_snapshot: oci://localhost/test/tiny:1',
        '    resources: { memory: 256Mi, disk: 1Gi }',
        '    wait_for: [db]',
        '    port_forward_rules:',
        '      - { local: 7000, remote: { target: db, port: data } }',
        '',
      ].join('\n'),
    );
    const created = await runCs(['sandbox', 'create', '-f', file, '--wait'], { env: home.env, timeoutMs: 300_000 });
    expect(created.stderr).not.toContain('Error');
    expect(created.exitCode).toBe(0);
    const fetched = await runCs(['exec', '-W', 'pair/app', '--', 'busybox', 'wget', '-qO-', 'http://127.0.0.1:7000/index.html'], { env: home.env });
    expect(fetched.stdout).toBe('from the db workspace');
    const list = JSON.parse((await runCs(['sandbox', 'list', '--json'], { env: home.env })).stdout) as { workspaces: Summary[] };
    expect(list.workspaces.filter((w) => w.sandbox === 'pair').map((w) => `${w.workspace}:${w.status}`).sort()).toEqual(['app:running', 'db:running']);
    // wait_for: app's start-up began only after db was ready.
    const appLog = (await runCs(['log', '-W', 'pair/app'], { env: home.env })).stdout;
    expect(appLog).toContain('==> wait for db');
    const dbRun = JSON.parse(await readFile(join(home.home, 'sandboxes', 'pair', 'db', 'run.json'), 'utf8')) as { startedAt: string; timings: Record<string, number> };
    const dbReadyAt = Date.parse(dbRun.startedAt) + (dbRun.timings['ready'] ?? Infinity);
    const waitLine = appLog.split('\n').find((l) => l.includes('==> forward 7000')) ?? '';
    expect(Date.parse(waitLine.split(' ')[0] ?? '')).toBeGreaterThanOrEqual(dbReadyAt - 5);
    const ambiguous = await runCs(['exec', '-W', 'pair', '--', 'true'], { env: home.env });
    expect(ambiguous.exitCode).toBe(2);
    expect(ambiguous.stderr).toContain('several workspaces');
  }, 300_000);
});
