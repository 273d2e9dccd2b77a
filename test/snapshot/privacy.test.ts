/**
 * Personal snapshots are private to their owner, and the operating system
 * enforces it, not only cs: two real OS users share one cs data directory
 * (a team's, group-writable), one makes a personal snapshot, and the other
 * can neither list, show, read nor apply it, through cs or directly. Since
 * anyone in the team can rename folders in that directory, cs keeps
 * personal data in each user's own data folder there, and never uses a
 * personal folder someone else made.
 *
 * Needs root (to add the two users); CI runs as root. cs itself runs as
 * each user, from a copy of the package in a folder they can read (the
 * checkout may sit under a folder only root can enter).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, ROOT, userEnv } from '../helpers/cli.js';

const isRoot = process.getuid?.() === 0;
const GROUP = 'csteam';
const USERS = ['csalice', 'csbob'] as const;
type User = (typeof USERS)[number];

interface Person {
  name: User;
  uid: number;
  home: string;
}

let base: string;
let pkg: string;
let csHome: string;
const people = {} as Record<User, Person>;

function ensureAccount(name: string): number {
  try {
    return Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
  } catch {
    execFileSync('useradd', ['--no-create-home', '--shell', '/bin/sh', '--groups', GROUP, name]);
    return Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
  }
}

/** `cs ARGS` as `who`, with umask 002 (the team's folder is group-writable). */
async function cs(who: User, args: readonly string[]): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const person = people[who];
  const env = userEnv({ PATH: process.env['PATH'], HOME: person.home, CS_HOME: csHome, CS_CONFIG: join(person.home, 'config.yaml'), LANG: 'C.UTF-8' });
  const result = await execa('setpriv', ['--reuid', who, '--regid', who, '--init-groups', '--', 'sh', '-c', 'umask 002; exec "$@"', 'sh', process.execPath, join(pkg, 'bin', 'run.cjs'), ...args], {
    env,
    extendEnv: false,
    reject: false,
    cwd: person.home,
    timeout: 120_000,
  });
  return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** A shell command as `who` (for reading files directly). */
async function shell(who: User, command: string): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const result = await execa('setpriv', ['--reuid', who, '--regid', who, '--init-groups', '--', 'sh', '-c', command], { reject: false, env: { PATH: process.env['PATH'] ?? '' }, extendEnv: false });
  return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
}

describe.runIf(isRoot)('personal snapshots are private (two real users)', () => {
  beforeAll(async () => {
    await ensureBuilt('snapshot/create');
    try {
      execFileSync('getent', ['group', GROUP]);
    } catch {
      execFileSync('groupadd', [GROUP]);
    }
    base = mkdtempSync(join(tmpdir(), 'cs-privacy-'));
    chmodSync(base, 0o755);
    // The package, where both users can read it.
    pkg = join(base, 'pkg');
    for (const part of ['bin', 'dist', 'node_modules', 'package.json', 'oclif.manifest.json']) {
      if (existsSync(join(ROOT, part))) cpSync(join(ROOT, part), join(pkg, part), { recursive: true, verbatimSymlinks: true });
    }
    execFileSync('chmod', ['-R', 'a+rX', pkg]);
    // The team's data directory: group csteam, setgid, group-writable.
    csHome = join(base, 'cs');
    mkdirSync(csHome);
    execFileSync('chgrp', [GROUP, csHome]);
    chmodSync(csHome, 0o2775);
    for (const name of USERS) {
      const uid = ensureAccount(name);
      execFileSync('usermod', ['-a', '-G', GROUP, name]);
      const home = join(base, name);
      mkdirSync(home);
      chownSync(home, uid, uid);
      people[name] = { name, uid, home };
    }
    // Alice's dotfiles.
    const alice = people.csalice;
    await shell('csalice', `mkdir -p ${alice.home}/.snapshot.personal && echo 'token=alice-secret-42' > ${alice.home}/.netrc && echo .netrc > ${alice.home}/.snapshot.personal/includes.txt`);
    await shell('csalice', `mkdir -p ${alice.home}/base/etc && echo ID=test > ${alice.home}/base/etc/os-release`);
  }, 600_000);

  afterAll(async () => {
    for (const name of USERS) execFileSync('userdel', [name], { stdio: 'ignore' });
    if (base) await rm(base, { recursive: true, force: true });
  });

  it('the owner creates, lists and applies it', async () => {
    const imported = await cs('csalice', ['image', 'import', join(people.csalice.home, 'base'), 'localhost/test/base:1']);
    expect(imported.exitCode, imported.stderr).toBe(0);
    const created = await cs('csalice', ['snapshot', 'create', '--personal', 'secret', '--json']);
    expect(created.exitCode, created.stderr).toBe(0);
    expect(JSON.parse(created.stdout)).toMatchObject({ name: 'secret', kind: 'personal', isDefault: true });
    const list = JSON.parse((await cs('csalice', ['snapshot', 'list', '--json'])).stdout) as { snapshots: { name: string }[] };
    expect(list.snapshots.map((s) => s.name)).toEqual(['secret']);
    const out = join(people.csalice.home, 'root');
    const assembled = await cs('csalice', ['rootfs', 'assemble', '--base', 'localhost/test/base:1', '--personal', 'secret', '--format', 'dir', '--out', out]);
    expect(assembled.exitCode, assembled.stderr).toBe(0);
    expect((await shell('csalice', `cat ${out}/home/owner/.netrc`)).stdout).toBe('token=alice-secret-42');
  });

  it('in a data directory the team can write, personal data stays in each user\'s own folder; a planted one is never used', async () => {
    const mine = join(people.csalice.home, '.local', 'share', 'cs', 'personal', String(people.csalice.uid));
    expect((await shell('csalice', `ls ${mine}`)).stdout).toContain('secret.json');
    expect(existsSync(join(csHome, 'snapshots', 'personal', String(people.csalice.uid)))).toBe(false);
    // Alice plants an open folder where bob's private one would go in the shared directory.
    const bobs = join(csHome, 'snapshots', 'personal', String(people.csbob.uid));
    const planted = await shell('csalice', `mkdir -p -m 0777 ${bobs} && chmod 0777 ${bobs}`);
    expect(planted.exitCode, planted.stderr).toBe(0);
    await shell('csbob', `mkdir -p ${people.csbob.home}/.snapshot.personal && echo x > ${people.csbob.home}/.x && echo .x > ${people.csbob.home}/.snapshot.personal/includes.txt`);
    const created = await cs('csbob', ['snapshot', 'create', '--personal', 'mine']);
    expect(created.exitCode, created.stderr).toBe(0);
    expect((await shell('csbob', `ls -A ${bobs}`)).stdout).toBe('');
    expect((await shell('csbob', `ls ${people.csbob.home}/.local/share/cs/personal/${people.csbob.uid}`)).stdout).toContain('mine.json');
    expect((await cs('csbob', ['snapshot', 'remove', 'mine'])).exitCode).toBe(0);
    await rm(bobs, { recursive: true, force: true });
  });

  it('another user cannot list, show, apply or make it their default', async () => {
    const list = await cs('csbob', ['snapshot', 'list', '--json']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual({ snapshots: [] });
    const show = await cs('csbob', ['snapshot', 'show', 'secret']);
    expect(show.exitCode).toBe(3);
    expect(show.stderr).toContain('no snapshot "secret"');
    const setDefault = await cs('csbob', ['snapshot', 'personal', 'set-default', 'secret']);
    expect(setDefault.exitCode).toBe(3);
    expect(setDefault.stderr).toContain('you have no personal snapshot "secret"');
    const out = join(people.csbob.home, 'root');
    const assembled = await cs('csbob', ['rootfs', 'assemble', '--base', 'localhost/test/base:1', '--personal', 'secret', '--format', 'dir', '--out', out]);
    expect(assembled.exitCode).toBe(3);
    expect(assembled.stderr).toContain('you have no personal snapshot "secret"');
    expect(existsSync(join(out, 'home/owner/.netrc'))).toBe(false);
    const removed = await cs('csbob', ['snapshot', 'remove', 'secret', '-f']);
    expect(removed.exitCode).toBe(3);
    // Still there for its owner.
    expect((await cs('csalice', ['snapshot', 'show', 'secret'])).exitCode).toBe(0);
  });

  it('the files themselves are closed to the other user', async () => {
    const dir = join(people.csalice.home, '.local', 'share', 'cs', 'personal', String(people.csalice.uid));
    const listing = await shell('csbob', `ls ${dir}`);
    expect(listing.exitCode).not.toBe(0);
    expect(listing.stderr).toContain('Permission denied');
    expect((await shell('csbob', `cat ${dir}/secret.json`)).stderr).toContain('Permission denied');
    // Nothing bob can read in the data directory or alice's home holds alice's file, compressed or not.
    const readable = await shell('csbob', `find ${csHome} ${people.csalice.home} -type f -readable 2>/dev/null`);
    const files = readable.stdout.split('\n').filter((f) => f !== '');
    expect(files.length).toBeGreaterThan(0);
    expect(files.some((f) => f.startsWith(`${dir}/`))).toBe(false);
    // (alice's own ~/.netrc is hers to protect; cs's copies are what is checked)
    for (const file of files.filter((f) => f !== join(people.csalice.home, '.netrc'))) {
      const found = await shell('csbob', `(zcat -f '${file}' 2>/dev/null || cat '${file}') | grep -c alice-secret-42 || true`);
      expect(found.stdout.trim(), file).toBe('0');
    }
  });

});
