/**
 * An unprivileged user's assembly still gives the image the layers ask
 * for: owners other than the user, device nodes and xattrs that need root.
 * An erofs image is written from the layers' headers (no privilege needed);
 * for the other formats they are recorded while the tree is built and
 * applied where the image is built (ext4 under fakeroot, tar headers
 * directly, a file beside a folder). `cs rootfs assemble` runs as a real other user
 * (setpriv); the images are read back with fsck.erofs, debugfs and GNU tar.
 * The suite runs as root, which is what lets it switch users.
 */
import { execFileSync } from 'node:child_process';
import { chmod, mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, userEnv } from '../helpers/cli.js';
import { makeHome, type TestHome } from './support/home.js';
import { buildImage, dir, file, type Entry } from './support/layers.js';

const isRoot = process.getuid?.() === 0;

/** Two layers: the second replaces a file the first gave to uid 33 with a root-owned one (its record must not stick). */
const LAYERS: Entry[][] = [
  [
    dir('etc'),
    dir('srv', { uid: 33, gid: 33, mode: 0o750 }),
    file('srv/data', 'www\n', { uid: 33, gid: 44, mode: 0o4755 }),
    file('etc/root-owned', 'root\n'),
    file('etc/replaced', 'old\n', { uid: 33, gid: 33 }),
    { type: 'char', path: 'null', major: 1, minor: 3, mode: 0o666 },
    { type: 'block', path: 'disk', major: 8, minor: 1, mode: 0o660, gid: 6 },
    file('bin-ping', 'ping\n', { mode: 0o755, pax: { 'SCHILY.xattr.security.capability': Buffer.from('0100000200200000000000000000000000000000', 'hex').toString('latin1'), 'SCHILY.xattr.user.note': 'kept' } }),
  ],
  [file('etc/replaced', 'new\n')],
];
const USER = 'csbuilder';

describe.runIf(isRoot)('unprivileged assembly applies owners, devices and xattrs in the image', () => {
  let home: TestHome;
  let uid: number;

  const cs = async (...args: string[]) => {
    const env = userEnv({ PATH: process.env['PATH'], HOME: home.root, CS_HOME: home.csHome, CS_CONFIG: join(home.root, 'none.yaml'), LANG: 'C.UTF-8' });
    return execa('setpriv', ['--reuid', USER, '--regid', USER, '--init-groups', '--', process.execPath, join(ROOT, 'bin', 'run.cjs'), ...args], { env, extendEnv: false, reject: false, cwd: home.root, timeout: 120_000 });
  };

  beforeAll(async () => {
    try {
      uid = Number(execFileSync('id', ['-u', USER], { encoding: 'utf8' }).trim());
    } catch {
      execFileSync('useradd', ['--no-create-home', '--shell', '/bin/sh', USER]);
      uid = Number(execFileSync('id', ['-u', USER], { encoding: 'utf8' }).trim());
    }
    home = await makeHome('unpriv');
    await buildImage(home.store, 'localhost/unpriv/base:1', LAYERS);
    await buildImage(home.store, 'localhost/unpriv/home:1', [[file('notes.txt', 'mine\n', { uid: 1000, gid: 1000 })]]);
    await mkdir(join(home.root, 'out'), { recursive: true });
    await execa('chown', ['-R', `${USER}:${USER}`, home.root]);
    await chmod(home.root, 0o755);
  }, 120_000);

  afterAll(async () => {
    await home?.cleanup();
  });

  const expected = (get: (path: string) => { uid: number; gid: number } | undefined) => {
    expect(get('srv')).toMatchObject({ uid: 33, gid: 33 });
    expect(get('srv/data')).toMatchObject({ uid: 33, gid: 44 });
    expect(get('etc/root-owned')).toMatchObject({ uid: 0, gid: 0 });
    expect(get('etc/replaced')).toMatchObject({ uid: 0, gid: 0 });
    expect(get('disk')).toMatchObject({ uid: 0, gid: 6 });
  };

  it('erofs: owners, setuid, devices and the capability xattr, for a user who is none of them', async () => {
    const out = join(home.root, 'out', 'root.erofs');
    const result = await cs('rootfs', 'assemble', '--base', 'localhost/unpriv/base:1', '--format', 'erofs', '-o', out);
    expect(result.exitCode, result.stderr).toBe(0);
    const dest = join(home.root, 'erofs-extract');
    await execa('fsck.erofs', [`--extract=${dest}`, '--preserve', out]);
    const st = (p: string) => {
      const s = execFileSync('stat', ['-c', '%u %g %a %F %t %T', join(dest, p)], { encoding: 'utf8' }).trim().split(' ');
      return { uid: Number(s[0]), gid: Number(s[1]), perm: s[2], type: s.slice(3, -2).join(' '), major: parseInt(s[s.length - 2] ?? '', 16), minor: parseInt(s[s.length - 1] ?? '', 16) };
    };
    expected(st);
    // Extracting with owners makes chown clear setuid: the modes are read from a second extraction without them.
    await execa('fsck.erofs', [`--extract=${dest}.perms`, '--preserve-perms', '--no-preserve-owner', out]);
    expect(execFileSync('stat', ['-c', '%a', join(`${dest}.perms`, 'srv/data')], { encoding: 'utf8' }).trim()).toBe('4755');
    expect(st('null')).toMatchObject({ type: 'character special file', major: 1, minor: 3, uid: 0 });
    expect(st('disk')).toMatchObject({ type: 'block special file', major: 8, minor: 1 });
    // fsck.erofs does not extract xattrs: the oracle is the same chain assembled by root, inode by inode (dump.erofs).
    const rootHome = await makeHome('unpriv-root');
    try {
      await buildImage(rootHome.store, 'localhost/unpriv/base:1', LAYERS);
      const rootOut = join(rootHome.root, 'root.erofs');
      const built = await execa(process.execPath, [join(ROOT, 'bin', 'run.cjs'), 'rootfs', 'assemble', '--base', 'localhost/unpriv/base:1', '--format', 'erofs', '-o', rootOut], { env: userEnv(rootHome.env), extendEnv: false, reject: false });
      expect(built.exitCode, built.stderr).toBe(0);
      const inode = async (image: string, path: string): Promise<string[]> =>
        (await execa('dump.erofs', [`--path=/${path}`, image])).stdout.split('\n').filter((l) => /Size:|Xattr size|Uid:/.test(l)).map((l) => l.replace(/On-disk size: \d+/, ''));
      for (const path of ['srv', 'srv/data', 'etc/root-owned', 'etc/replaced', 'null', 'disk', 'bin-ping']) {
        expect(await inode(out, path), path).toEqual(await inode(rootOut, path));
      }
      expect((await inode(out, 'bin-ping')).join(' ')).toMatch(/Xattr size: [1-9]/);
    } finally {
      await rootHome.cleanup();
    }
    expect(uid).toBeGreaterThan(0);
  }, 120_000);

  it('ext4: the same, read back with debugfs', async () => {
    const out = join(home.root, 'out', 'root.ext4');
    const result = await cs('rootfs', 'assemble', '--base', 'localhost/unpriv/base:1', '--format', 'ext4', '-o', out);
    expect(result.exitCode, result.stderr).toBe(0);
    const stat = async (p: string) => {
      const text = (await execa('debugfs', ['-R', `stat "/${p}"`, out])).stdout;
      const owner = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(text);
      return { uid: Number(owner?.[1]), gid: Number(owner?.[2]), text };
    };
    const stats = new Map<string, { uid: number; gid: number; text: string }>();
    for (const p of ['srv', 'srv/data', 'etc/root-owned', 'etc/replaced', 'disk', 'null']) stats.set(p, await stat(p));
    expected((p) => stats.get(p));
    expect(stats.get('null')?.text).toMatch(/Type: character special/);
    expect(stats.get('null')?.text).toMatch(/Device major\/minor number: 01:03/);
    expect(stats.get('srv/data')?.text).toMatch(/Mode:\s+04755/);
    const cap = await execa('debugfs', ['-R', 'ea_list "/bin-ping"', out]);
    expect(cap.stdout).toContain('security.capability');
    // A home snapshot on the cached base: the base's tree is reused (a hard-link copy with new folders) and keeps its owners.
    const withHome = join(home.root, 'out', 'home.ext4');
    const again = await cs('rootfs', 'assemble', '--base', 'localhost/unpriv/base:1', '--home', 'localhost/unpriv/home:1', '--format', 'ext4', '-o', withHome);
    expect(again.exitCode, again.stderr).toBe(0);
    const owner = async (p: string) => /User:\s+(\d+)\s+Group:\s+(\d+)/.exec((await execa('debugfs', ['-R', `stat "/${p}"`, withHome])).stdout)?.slice(1).map(Number);
    expect(await owner('srv')).toEqual([33, 33]);
    expect(await owner('srv/data')).toEqual([33, 44]);
    expect(await owner('home/owner/notes.txt')).toEqual([1000, 1000]);
    expect(await owner('etc/replaced')).toEqual([0, 0]);
  }, 120_000);

  it('tar: headers carry them; a folder gets them in a file beside it', async () => {
    const out = join(home.root, 'out', 'root.tar');
    const result = await cs('rootfs', 'assemble', '--base', 'localhost/unpriv/base:1', '--format', 'tar', '-o', out);
    expect(result.exitCode, result.stderr).toBe(0);
    const listing = (await execa('tar', ['--numeric-owner', '-tvf', out])).stdout.split('\n');
    const line = (p: string) => listing.find((l) => l.endsWith(` ${p}`) || l.includes(` ${p} `) || l.endsWith(` ${p}/`)) ?? '';
    expect(line('srv/data')).toMatch(/^-rwsr-xr-x 33\/44 /);
    expect(line('etc/root-owned')).toMatch(/ 0\/0 /);
    expect(line('etc/replaced')).toMatch(/ 0\/0 /);
    expect(line('null')).toMatch(/^crw-rw-rw- 0\/0 +1,3 /);
    expect(line('disk')).toMatch(/^brw-rw---- 0\/6 +8,1 /);
    // The capability is in the PAX headers (GNU tar shows it with --xattrs).
    const pax = (await execa('tar', ['--xattrs', '--xattrs-include=*', '-tvvf', out, 'bin-ping'])).stdout;
    expect(pax).toMatch(/security\.capability/);
    const folder = join(home.root, 'out', 'root.dir');
    const dirResult = await cs('rootfs', 'assemble', '--base', 'localhost/unpriv/base:1', '--format', 'dir', '-o', folder);
    expect(dirResult.exitCode, dirResult.stderr).toBe(0);
    const side = await readFile(`${folder}.owners.jsonl`, 'utf8');
    expect(side).toContain('"path":"srv/data"');
    expect(side).toContain('"major":1');
    await rm(folder, { recursive: true, force: true });
  }, 120_000);
});
