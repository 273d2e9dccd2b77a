/**
 * What applying layers must produce (image-spec layer.md): entries of every
 * type with their modes, owners, times and xattrs; long names in PAX and GNU
 * form; whiteouts and opaque folders hiding lower layers only; later entries
 * replacing earlier ones; and, unprivileged, ownership and devices reported
 * instead of applied.
 */
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { DeferredMetadata } from '../../src/layers/apply.js';
import { apply, applyStack, deviceNumbers, kindOf, modeOf, tree, what, type Layer } from './support/inspect.js';
import {
  blockDevice,
  charDevice,
  dir,
  fifo,
  file,
  gnuLongLinkName,
  gnuLongName,
  hardlink,
  rawRecord,
  rawTar,
  symlink,
  whiteout,
} from './support/tar.js';

const isRoot = process.getuid?.() === 0;
const T1 = new Date('2011-11-11T11:11:11Z');
const T2 = new Date('2012-12-12T12:12:12Z');

let tmp: string;
let root: string;
beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), 'cs-layer-semantics-'));
  root = join(tmp, 'rootfs');
  mkdirSync(root, { mode: 0o755 });
});
afterEach(() => {
  rmSync(tmp, { recursive: true, force: true });
});

const p = (rel: string): string => join(root, rel);
const at = (rel: string): string => what(p(rel));
const mtimeOf = (rel: string): number => lstatSync(p(rel)).mtime.getTime();
const ownerOf = (rel: string): [number, number] => {
  const info = lstatSync(p(rel));
  return [info.uid, info.gid];
};

describe('entry types', () => {
  it('regular files, folders (also implicit parents), symlinks and hardlinks', async () => {
    const result = await apply(root, [
      dir('etc/', { mode: 0o755 }),
      file('etc/hosts', '127.0.0.1 localhost\n', { mode: 0o644 }),
      symlink('etc/localtime', '/usr/share/zoneinfo/UTC'),
      hardlink('etc/hosts.bak', 'etc/hosts'),
      file('./usr/bin/tool', '#!/bin/sh\n', { mode: 0o755 }),
    ]);
    expect(result).toEqual({ entries: 5, bytes: 20 + 10, whiteouts: 0 });
    expect(tree(root)).toEqual(['etc', 'etc/hosts', 'etc/hosts.bak', 'etc/localtime', 'usr', 'usr/bin', 'usr/bin/tool']);
    expect(at('etc/hosts')).toBe('file:127.0.0.1 localhost\n');
    expect(at('etc/localtime')).toBe('symlink->/usr/share/zoneinfo/UTC');
    const hosts = lstatSync(p('etc/hosts'));
    expect(lstatSync(p('etc/hosts.bak')).ino).toBe(hosts.ino);
    expect(hosts.nlink).toBe(2);
    // Parents a layer does not list are made as 0755 folders.
    expect(kindOf(p('usr/bin'))).toBe('dir');
    expect(modeOf(p('usr'))).toBe(0o755);
  });

  it('a hardlink to a file of a lower layer', async () => {
    await applyStack(root, [[file('usr/bin/python3.11', 'python')], [hardlink('./usr/bin/python3', './usr/bin/python3.11')]]);
    expect(lstatSync(p('usr/bin/python3')).ino).toBe(lstatSync(p('usr/bin/python3.11')).ino);
    expect(at('usr/bin/python3')).toBe('file:python');
  });

  it('a hardlink resolves its target inside the root, through symlinks', async () => {
    await apply(root, [file('real/f', 'data'), symlink('alias', '/real'), hardlink('h', 'alias/f')]);
    expect(lstatSync(p('h')).ino).toBe(lstatSync(p('real/f')).ino);
  });

  it('FIFOs', async () => {
    await apply(root, [fifo('run/initctl', { mode: 0o600 })]);
    expect(kindOf(p('run/initctl'))).toBe('fifo');
    expect(modeOf(p('run/initctl'))).toBe(0o600);
  });

  it.runIf(isRoot)('character and block devices (mknod, as root)', async () => {
    await apply(root, [charDevice('dev/null', 1, 3, { mode: 0o666 }), blockDevice('dev/loop0', 7, 0, { mode: 0o660, gid: 6 })]);
    expect(at('dev/null')).toBe('char:1,3');
    expect(modeOf(p('dev/null'))).toBe(0o666);
    expect(at('dev/loop0')).toBe('block:7,0');
    expect(modeOf(p('dev/loop0'))).toBe(0o660);
    expect(ownerOf('dev/loop0')).toEqual([0, 6]);
    expect(deviceNumbers(lstatSync(p('dev/null')).rdev)).toEqual({ major: 1, minor: 3 });
  });
});

describe('metadata', () => {
  it('modes, with setuid, setgid and sticky bits', async () => {
    await apply(root, [
      file('usr/bin/passwd', 'x', { mode: 0o4755 }),
      file('usr/bin/wall', 'x', { mode: 0o2755 }),
      dir('srv/shared/', { mode: 0o2775 }),
      dir('tmp/', { mode: 0o1777 }),
      file('etc/secret', 'x', { mode: 0o400 }),
      dir('root/', { mode: 0o700 }),
      fifo('run/fifo', { mode: 0o620 }),
    ]);
    expect(modeOf(p('usr/bin/passwd'))).toBe(0o4755);
    expect(modeOf(p('usr/bin/wall'))).toBe(0o2755);
    expect(modeOf(p('srv/shared'))).toBe(0o2775);
    expect(modeOf(p('tmp'))).toBe(0o1777);
    expect(modeOf(p('etc/secret'))).toBe(0o400);
    expect(modeOf(p('root'))).toBe(0o700);
    expect(modeOf(p('run/fifo'))).toBe(0o620);
  });

  it.runIf(isRoot)('ownership 1234:5678 on every type (lchown), with setuid kept after the chown', async () => {
    const owner = { uid: 1234, gid: 5678 };
    await apply(root, [
      dir('home/', { ...owner, mode: 0o750 }),
      file('home/f', 'x', { ...owner, mode: 0o4755 }),
      symlink('home/link', '/nowhere', owner),
      fifo('home/fifo', owner),
      charDevice('home/null', 1, 3, owner),
      file('rootfile', 'x'),
    ]);
    for (const rel of ['home', 'home/f', 'home/link', 'home/fifo', 'home/null']) expect(ownerOf(rel), rel).toEqual([1234, 5678]);
    expect(ownerOf('rootfile')).toEqual([0, 0]);
    expect(modeOf(p('home/f'))).toBe(0o4755);
    expect(modeOf(p('home'))).toBe(0o750);
  });

  it('mtimes of files, symlinks, FIFOs, and of folders whose children come after them', async () => {
    await apply(root, [
      dir('./', { mtime: T2 }),
      dir('a/', { mtime: T1 }),
      dir('a/b/', { mtime: T2 }),
      file('a/b/f', 'x', { mtime: T1 }),
      symlink('a/b/l', 'f', { mtime: T2 }),
      fifo('a/b/p', { mtime: T1 }),
      file('a/late', 'x', { mtime: T2 }),
      dir('a/b/c/', { mtime: T1 }),
    ]);
    expect(mtimeOf('a/b/f')).toBe(T1.getTime());
    expect(mtimeOf('a/b/l')).toBe(T2.getTime());
    expect(mtimeOf('a/b/p')).toBe(T1.getTime());
    expect(mtimeOf('a/late')).toBe(T2.getTime());
    // Folders keep their header time although children were added after them.
    expect(mtimeOf('a')).toBe(T1.getTime());
    expect(mtimeOf('a/b')).toBe(T2.getTime());
    expect(mtimeOf('a/b/c')).toBe(T1.getTime());
    expect(mtimeOf('')).toBe(T2.getTime());
  });

  it('a folder keeps its header time after whiteouts and an opaque marker changed it', async () => {
    await applyStack(root, [
      [file('d/old', 'old'), file('e/old', 'old')],
      [dir('d/', { mtime: T1 }), whiteout('d/.wh.old'), dir('e/', { mtime: T2 }), whiteout('e/.wh..wh..opq'), file('e/new', 'new', { mtime: T1 })],
    ]);
    expect(tree(root)).toEqual(['d', 'e', 'e/new']);
    expect(mtimeOf('d')).toBe(T1.getTime());
    expect(mtimeOf('e')).toBe(T2.getTime());
  });

  it('xattrs from PAX SCHILY.xattr records go to onXattrs (privileged)', async () => {
    const calls: [string, Record<string, string>][] = [];
    await apply(
      root,
      [
        // With cs's PAX codec installed, xattr values are byte strings in both directions.
        file('f', 'x', { pax: { 'SCHILY.xattr.user.test': 'hello', 'SCHILY.xattr.user.other': Buffer.from('wörld').toString('latin1') } }),
        dir('d/', { pax: { 'SCHILY.xattr.user.test': 'on a folder' } }),
        file('plain', 'x'),
        symlink('alias', 'd'),
        file('alias/g', 'x', { pax: { 'SCHILY.xattr.user.test': 'through a symlinked parent', comment: 'not an xattr' } }),
      ],
      { privileged: true, onXattrs: (path, xattrs) => calls.push([path, xattrs]) },
    );
    expect(calls).toEqual([
      // Values are byte strings (latin1, one character per byte): xattrs are binary.
      ['f', { 'user.test': 'hello', 'user.other': Buffer.from('wörld').toString('latin1') }],
      ['d', { 'user.test': 'on a folder' }],
      // The path is the real one, inside the root.
      ['d/g', { 'user.test': 'through a symlinked parent' }],
    ]);
  });
});

describe('long names', () => {
  const longDir = `${'a'.repeat(120)}/${'b'.repeat(120)}`;
  const longPath = `${longDir}/${'c'.repeat(120)}.txt`; // 366 characters, components over 100
  const longTarget = `/${'t'.repeat(150)}/${'u'.repeat(150)}`;

  it('PAX path and linkpath (names over 100 and paths over 255 characters)', async () => {
    expect(longPath.length).toBeGreaterThan(255);
    await apply(root, [
      file(longPath, 'pax name'),
      symlink(`${longDir}/link`, longTarget),
      hardlink(`${longDir}/${'h'.repeat(150)}`, longPath),
    ]);
    expect(at(longPath)).toBe('file:pax name');
    expect(at(`${longDir}/link`)).toBe(`symlink->${longTarget}`);
    expect(lstatSync(p(`${longDir}/${'h'.repeat(150)}`)).ino).toBe(lstatSync(p(longPath)).ino);
  });

  it('GNU long name (L) and long link name (K) records', async () => {
    const tar = rawTar([
      gnuLongName(longPath),
      rawRecord({ name: longPath.slice(0, 100), typeflag: '0', mode: 0o640 }, 'gnu name'),
      gnuLongName(`${longDir}/link`),
      gnuLongLinkName(longTarget),
      rawRecord({ name: 'truncated', typeflag: '2', linkname: longTarget.slice(0, 100), mode: 0o777 }),
    ]);
    await apply(root, tar);
    expect(at(longPath)).toBe('file:gnu name');
    expect(modeOf(p(longPath))).toBe(0o640);
    expect(at(`${longDir}/link`)).toBe(`symlink->${longTarget}`);
    expect(kindOf(p('truncated'))).toBe('missing');
  });
});

describe('whiteouts', () => {
  it('remove a file and a folder (with its content) of a lower layer', async () => {
    const result = await applyStack(root, [
      [file('etc/motd', 'hi'), file('etc/keep', 'keep'), file('var/cache/apt/pkgcache.bin', 'x'), dir('var/cache/apt/archives/')],
      [whiteout('etc/.wh.motd'), whiteout('var/.wh.cache'), whiteout('.wh.never-existed')],
    ]);
    expect(result.whiteouts).toBe(3);
    expect(tree(root)).toEqual(['etc', 'etc/keep', 'var']);
  });

  it('remove a symlink of a lower layer, not what it points at', async () => {
    await applyStack(root, [[file('target/f', 'f'), symlink('link', 'target')], [whiteout('.wh.link')]]);
    expect(tree(root)).toEqual(['target', 'target/f']);
  });

  it.each([
    ['the whiteout first', [whiteout('.wh.a'), file('a', 'new')]],
    ['the whiteout last', [file('a', 'new'), whiteout('.wh.a')]],
  ] as const)('apply to lower layers only: a file added in the same layer survives (%s)', async (_order, upper) => {
    await applyStack(root, [[file('a', 'lower')], upper]);
    expect(at('a')).toBe('file:new');
  });

  it.each([
    ['the whiteout first', [whiteout('.wh.d'), file('d/new', 'new')]],
    ['the whiteout last', [file('d/new', 'new'), whiteout('.wh.d')]],
  ] as const)('apply to lower layers only: a folder whited out keeps what the same layer put in it (%s)', async (_order, upper) => {
    await applyStack(root, [[file('d/old', 'old'), file('d/sub/old', 'old')], upper]);
    expect(tree(root)).toEqual(['d', 'd/new']);
  });

  it('a whiteout in a lower layer does not hide what an upper layer adds back', async () => {
    await applyStack(root, [[file('a', 'one')], [whiteout('.wh.a')], [file('a', 'three')]]);
    expect(at('a')).toBe('file:three');
  });
});

describe('opaque folders', () => {
  const lower: Layer = [file('d/a', 'a'), file('d/b', 'b'), file('d/sub/old', 'old'), dir('d/emptydir/'), file('other/x', 'x')];

  it.each([
    ['before the new children', [whiteout('d/.wh..wh..opq'), file('d/c', 'c')]],
    ['after the new children', [file('d/c', 'c'), whiteout('d/.wh..wh..opq')]],
    ['between new children', [file('d/c', 'c'), whiteout('d/.wh..wh..opq'), file('d/e', 'e')]],
    ['with the folder entry after it', [whiteout('d/.wh..wh..opq'), file('d/c', 'c'), dir('d/', { mode: 0o711 })]],
  ] as const)('hide the lower content wherever the marker sits (%s)', async (_where, upper) => {
    await applyStack(root, [lower, upper]);
    const expected = ['d', 'd/c', 'other', 'other/x'];
    if (upper.some((e) => e.name === 'd/e')) expected.splice(2, 0, 'd/e');
    expect(tree(root)).toEqual(expected);
    expect(at('d/c')).toBe('file:c');
  });

  it('hide the lower content of subfolders the layer writes into', async () => {
    await applyStack(root, [lower, [whiteout('d/.wh..wh..opq'), file('d/sub/new', 'new'), dir('d/emptydir/', { mode: 0o700 })]]);
    expect(tree(root)).toEqual(['d', 'd/emptydir', 'd/sub', 'd/sub/new', 'other', 'other/x']);
    expect(modeOf(p('d/emptydir'))).toBe(0o700);
  });

  it('an opaque marker alone empties the folder, and keeps it', async () => {
    const result = await applyStack(root, [lower, [whiteout('d/.wh..wh..opq')]]);
    expect(result.whiteouts).toBe(1);
    expect(tree(root)).toEqual(['d', 'other', 'other/x']);
  });

  it('an opaque marker for a folder no lower layer has changes nothing', async () => {
    await applyStack(root, [lower, [whiteout('new/.wh..wh..opq'), file('new/f', 'f')]]);
    expect(tree(root)).toEqual(['d', 'd/a', 'd/b', 'd/emptydir', 'd/sub', 'd/sub/old', 'new', 'new/f', 'other', 'other/x']);
  });
});

describe('later entries replace earlier ones', () => {
  it('a file over a file (lower layer and same layer): content and mode', async () => {
    await applyStack(root, [[file('f', 'one', { mode: 0o644 })], [file('f', 'two', { mode: 0o600 }), file('g', 'first'), file('g', 'second', { mode: 0o640 })]]);
    expect(at('f')).toBe('file:two');
    expect(modeOf(p('f'))).toBe(0o600);
    expect(at('g')).toBe('file:second');
    expect(modeOf(p('g'))).toBe(0o640);
  });

  it.runIf(isRoot)('a folder over a folder keeps the children and takes the new mode, owner and time', async () => {
    await applyStack(root, [
      [dir('d/', { mode: 0o755, mtime: T1 }), file('d/child', 'c')],
      [dir('d/', { mode: 0o700, uid: 1234, gid: 5678, mtime: T2 }), dir('e/', { mode: 0o755 }), file('e/x', 'x'), dir('e/', { mode: 0o711 })],
    ]);
    expect(at('d/child')).toBe('file:c');
    expect(modeOf(p('d'))).toBe(0o700);
    expect(ownerOf('d')).toEqual([1234, 5678]);
    expect(mtimeOf('d')).toBe(T2.getTime());
    expect(at('e/x')).toBe('file:x');
    expect(modeOf(p('e'))).toBe(0o711);
  });

  it('a file over a folder removes the folder and its content', async () => {
    await applyStack(root, [[file('d/x', 'x'), file('d/sub/y', 'y')], [file('d', 'now a file')]]);
    expect(tree(root)).toEqual(['d']);
    expect(at('d')).toBe('file:now a file');
  });

  it('a folder over a file', async () => {
    await applyStack(root, [[file('f', 'file')], [dir('f/', { mode: 0o750 }), file('f/x', 'x')]]);
    expect(kindOf(p('f'))).toBe('dir');
    expect(modeOf(p('f'))).toBe(0o750);
    expect(at('f/x')).toBe('file:x');
  });

  it('a symlink replaced by a folder, and back', async () => {
    await applyStack(root, [
      [file('target/t', 't'), symlink('l', 'target')],
      [dir('l/'), file('l/own', 'own')],
    ]);
    expect(kindOf(p('l'))).toBe('dir');
    expect(tree(root)).toEqual(['l', 'l/own', 'target', 'target/t']);
    await apply(root, [symlink('l', 'target')]);
    expect(at('l')).toBe('symlink->target');
    expect(tree(root)).toEqual(['l', 'target', 'target/t']);
  });

  it('a symlink replaced by a folder and back within one layer', async () => {
    await apply(root, [symlink('l', 'target'), dir('l/'), file('l/x', 'x'), symlink('l', 'elsewhere')]);
    expect(tree(root)).toEqual(['l']);
    expect(at('l')).toBe('symlink->elsewhere');
  });

  it('a file over a symlink replaces the link, not its target', async () => {
    await applyStack(root, [[file('real', 'r'), symlink('l', 'real')], [file('l', 'new')]]);
    expect(at('real')).toBe('file:r');
    expect(at('l')).toBe('file:new');
  });

  it('a file over one name of a hardlinked pair leaves the other name alone', async () => {
    await applyStack(root, [[file('a', 'old'), hardlink('b', 'a')], [file('b', 'new')]]);
    expect(at('a')).toBe('file:old');
    expect(at('b')).toBe('file:new');
    expect(lstatSync(p('a')).nlink).toBe(1);
  });

  it('a symlink and a FIFO over a folder', async () => {
    await applyStack(root, [[file('d/x', 'x'), file('e/y', 'y')], [symlink('d', '/etc'), fifo('e')]]);
    expect(tree(root)).toEqual(['d', 'e']);
    expect(at('d')).toBe('symlink->/etc');
    expect(at('e')).toBe('fifo');
  });
});

describe('unprivileged', () => {
  it('reports ownership, devices and xattrs through onDeferred instead of applying them', async () => {
    const deferred: DeferredMetadata[] = [];
    const xattrCalls: string[] = [];
    await apply(
      root,
      [
        dir('home/', { uid: 1234, gid: 5678, mode: 0o750 }),
        file('home/f', 'x', { uid: 1234, gid: 5678, mode: 0o640 }),
        symlink('home/l', 'f', { uid: 1234, gid: 5678 }),
        fifo('home/p', { uid: 1234, gid: 5678, mode: 0o600 }),
        charDevice('dev/null', 1, 3, { mode: 0o666 }),
        blockDevice('dev/sda', 8, 0, { mode: 0o660, uid: 0, gid: 6 }),
        file('attrs', 'x', { pax: { 'SCHILY.xattr.user.test': 'v' } }),
      ],
      { privileged: false, onDeferred: (d) => deferred.push(d), onXattrs: (path) => xattrCalls.push(path) },
    );
    const owner = { uid: 1234, gid: 5678 };
    expect(deferred).toContainEqual({ path: 'home', ...owner });
    expect(deferred).toContainEqual({ path: 'home/f', ...owner });
    expect(deferred).toContainEqual({ path: 'home/l', ...owner });
    expect(deferred).toContainEqual({ path: 'home/p', ...owner });
    expect(deferred).toContainEqual({ path: 'dev/null', uid: 0, gid: 0, device: { type: 'char', major: 1, minor: 3, mode: 0o666 } });
    expect(deferred).toContainEqual({ path: 'dev/sda', uid: 0, gid: 6, device: { type: 'block', major: 8, minor: 0, mode: 0o660 } });
    expect(deferred).toContainEqual({ path: 'attrs', xattrs: { 'user.test': 'v' } });
    expect(deferred.filter((d) => d.device)).toHaveLength(2);
    expect(xattrCalls).toEqual([]);

    // Nothing was chowned; modes were applied.
    const me = [process.getuid?.() ?? 0, process.getgid?.() ?? 0];
    for (const rel of ['home', 'home/f', 'home/l', 'home/p']) expect(ownerOf(rel), rel).toEqual(me);
    expect(modeOf(p('home'))).toBe(0o750);
    expect(modeOf(p('home/f'))).toBe(0o640);
    expect(kindOf(p('home/p'))).toBe('fifo');
    // An empty placeholder file stands where each device goes.
    expect(at('dev/null')).toBe('file:');
    expect(at('dev/sda')).toBe('file:');
  });

  it('the default follows the user: as root, ownership is applied', async () => {
    const deferred: DeferredMetadata[] = [];
    await apply(root, [file('f', 'x', { uid: 1234, gid: 5678 })], { onDeferred: (d) => deferred.push(d) });
    if (isRoot) {
      expect(ownerOf('f')).toEqual([1234, 5678]);
      expect(deferred).toEqual([]);
    } else {
      expect(deferred).toEqual([{ path: 'f', uid: 1234, gid: 5678 }]);
    }
  });
});

describe('results', () => {
  it('count entries, content bytes and whiteouts', async () => {
    const result = await applyStack(root, [[file('a', 'x')], [file('b', '12345'), dir('c/'), whiteout('.wh.a'), whiteout('c/.wh..wh..opq')]]);
    expect(result).toEqual({ entries: 4, bytes: 5, whiteouts: 2 });
    expect(readFileSync(p('b'), 'utf8')).toBe('12345');
  });
});
