/**
 * A workspace on a real Debian base (debootstrap minbase, bookworm), booted
 * and used through the `cs` binary: what a user finds inside it, and that
 * their work survives suspend and resume. One sandbox for the whole file:
 * boots are the expensive part.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, runCs } from '../helpers/cli.js';
import { importDebianImage, vmHome, writeDefinition } from '../helpers/vm.js';

interface Summary {
  sandbox: string;
  workspace: string;
  status: string;
  timings?: Record<string, number>;
}

const SANDBOX = 'deb';
const WORKSPACE = 'bookworm-dev';
const TARGET = `${SANDBOX}/${WORKSPACE}`;

describe('a workspace from a Debian base', () => {
  let home: Awaited<ReturnType<typeof vmHome>> | undefined;
  let work: string | undefined;
  let env: Record<string, string>;

  /** `cs exec` in the workspace, as the owner unless `user` says otherwise. */
  const exec = (command: string, user?: string) => runCs(['exec', '-W', TARGET, ...(user ? ['--user', user] : []), '--', 'sh', '-c', command], { env, timeoutMs: 60_000 });

  beforeAll(async () => {
    await ensureBuilt('sandbox/create');
    home = await vmHome();
    env = home.env;
    work = await mkdtemp(join(tmpdir(), 'cs-debian-'));
    const image = await importDebianImage(env);
    const file = await writeDefinition(
      work,
      SANDBOX,
      [
        'workspaces:',
        `  - name: ${WORKSPACE}`,
        `    base_snapshot: oci://${image}`,
        '    resources: { memory: 512Mi, disk: 2Gi }',
        '',
      ].join('\n'),
    );
    const created = await runCs(['sandbox', 'create', '-f', file, '--wait', '--json'], { env, timeoutMs: 420_000 });
    expect(created.exitCode, created.stderr).toBe(0);
    const out = JSON.parse(created.stdout) as { workspaces: Summary[] };
    expect(out.workspaces[0]?.status).toBe('running');
  }, 600_000);

  afterAll(async () => {
    if (home) {
      await runCs(['sandbox', 'remove', SANDBOX], { env: home.env, timeoutMs: 60_000 });
      await home.cleanup();
    }
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('is Debian 12 with apt and dpkg working', async () => {
    const version = await exec('cat /etc/debian_version');
    expect(version.exitCode).toBe(0);
    expect(version.stdout).toMatch(/^12\.\d+$/);
    const apt = await exec('apt-get --version');
    expect(apt.exitCode).toBe(0);
    expect(apt.stdout).toMatch(/^apt 2\.6\.\d+/);
    const packages = await exec('dpkg -l | wc -l');
    expect(packages.exitCode).toBe(0);
    expect(Number(packages.stdout)).toBeGreaterThan(50);
    const installed = await exec("dpkg-query -W -f '${Status}' bash");
    expect(installed.stdout).toBe('install ok installed');
  });

  it('has the owner account, with bash as its shell and /home/owner as its home, and commands run as it there', async () => {
    const account = await exec('getent passwd owner');
    const [name, , uid, gid, , dir, shell] = account.stdout.split(':');
    expect(name).toBe('owner');
    expect(Number(uid)).toBeGreaterThanOrEqual(1000);
    expect(dir).toBe('/home/owner');
    expect(shell).toBe('/bin/bash');
    const group = await exec('getent group owner');
    expect(group.stdout.split(':')[2]).toBe(gid);
    const who = await exec('id -un; pwd; stat -c %U "$HOME"');
    expect(who.stdout).toBe('owner\n/home/owner\nowner');
    const root = await exec('id -u', 'root');
    expect(root.stdout).toBe('0');
  });

  it('is named after the workspace and uses QEMU\'s DNS server', async () => {
    const names = await exec('hostname; cat /etc/hostname; getent hosts "$(hostname)"');
    const [live, file, hosts] = names.stdout.split('\n');
    expect(live).toBe(WORKSPACE);
    expect(file).toBe(WORKSPACE);
    expect(hosts?.split(/\s+/)).toEqual(['127.0.1.1', WORKSPACE]);
    const resolv = await exec('cat /etc/resolv.conf');
    expect(resolv.stdout.split('\n').filter((l) => l.startsWith('nameserver'))).toEqual(['nameserver 10.0.2.3']);
  });

  it('reports its boot timings in sandbox show', async () => {
    const show = await runCs(['sandbox', 'show', SANDBOX, '--json'], { env });
    expect(show.exitCode).toBe(0);
    const summary = (JSON.parse(show.stdout) as { workspaces: Summary[] }).workspaces[0];
    expect(summary?.status).toBe('running');
    const timings = summary?.timings ?? {};
    expect(timings['agentReady']).toBeGreaterThan(0);
    expect(timings['ready']).toBeGreaterThanOrEqual(timings['agentReady'] as number);
    const human = await runCs(['sandbox', 'show', SANDBOX], { env });
    expect(human.stdout).toMatch(/agent ready after \d+\.\d\d s/);
  });

  it('keeps files the owner wrote, with their owner, across suspend and resume', async () => {
    const write = await exec('echo "kept across suspend" > notes.txt && mkdir -p projects/a && echo x > projects/a/f && sync');
    expect(write.exitCode).toBe(0);
    const bootBefore = (await exec('cat /proc/sys/kernel/random/boot_id')).stdout;

    const suspend = await runCs(['sandbox', 'suspend', SANDBOX, '--json'], { env, timeoutMs: 120_000 });
    expect(suspend.exitCode, suspend.stderr).toBe(0);
    expect((JSON.parse(suspend.stdout) as { workspaces: Summary[] }).workspaces[0]?.status).toBe('suspended');

    const resume = await runCs(['sandbox', 'resume', SANDBOX, '--wait', '--json'], { env, timeoutMs: 240_000 });
    expect(resume.exitCode, resume.stderr).toBe(0);
    expect((JSON.parse(resume.stdout) as { workspaces: Summary[] }).workspaces[0]?.status).toBe('running');

    // A new boot of the same disk.
    expect((await exec('cat /proc/sys/kernel/random/boot_id')).stdout).not.toBe(bootBefore);
    const read = await exec('cat notes.txt; stat -c "%U %a" notes.txt; cat projects/a/f');
    expect(read.stdout).toBe('kept across suspend\nowner 644\nx');
    // The account was not added a second time.
    expect((await exec('grep -c "^owner:" /etc/passwd')).stdout).toBe('1');
  }, 300_000);
});
