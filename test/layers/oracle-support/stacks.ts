/**
 * The tricky layer stacks the oracle unpacks with umoci and with cs. Each
 * layer lists its entries in tar order. Like the layers real tools write
 * (Docker, BuildKit, umoci itself), a layer carries an entry for every
 * directory whose contents it changes, so directory mtimes come from the
 * layers and can be compared; the stacks in BUG_STACKS (at the end) leave
 * that out on purpose, or hit other differences, one at a time.
 */
import type { LayerSpec } from './image.js';
import type { Entry } from '../../helpers/layer-tar.js';

export interface Stack {
  name: string;
  layers: LayerSpec[];
  /** Needs xattrs to be readable (python3) to mean anything. */
  xattrs?: boolean;
}

const T = 1_700_000_000; // explicit mtimes, distinct from the layers' defaults

/** Whiteouts over files, directories (with contents), symlinks; whiteout then re-create in one layer. */
const whiteouts: Stack = {
  name: 'whiteouts',
  layers: [
    {
      entries: [
        { type: 'dir', path: 'etc' },
        { type: 'file', path: 'etc/keep', content: 'keep v1\n' },
        { type: 'file', path: 'etc/gone', content: 'removed in layer 2\n' },
        { type: 'file', path: 'etc/recreated', content: 'v1\n' },
        { type: 'dir', path: 'var' },
        { type: 'dir', path: 'var/cache' },
        { type: 'file', path: 'var/cache/a', content: 'a' },
        { type: 'dir', path: 'var/cache/sub', mode: 0o700 },
        { type: 'file', path: 'var/cache/sub/b', content: 'b' },
        { type: 'symlink', path: 'var/cache/sub/link', target: '../a' },
        { type: 'dir', path: 'usr' },
        { type: 'dir', path: 'usr/lib' },
        { type: 'file', path: 'usr/lib/libc.so', content: 'elf' },
        { type: 'symlink', path: 'usr/lib64', target: 'lib' },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 'etc', mtime: T },
        { type: 'whiteout', path: 'etc/gone' },
        // Whiteout first, then the new file: the new file stays.
        { type: 'whiteout', path: 'etc/recreated' },
        { type: 'file', path: 'etc/recreated', content: 'v2\n', mode: 0o600 },
        // A whiteout of something that never existed is harmless.
        { type: 'whiteout', path: 'etc/never-existed' },
        { type: 'dir', path: 'var', mtime: T + 1 },
        { type: 'whiteout', path: 'var/cache' },
        { type: 'dir', path: 'usr', mtime: T + 2 },
        { type: 'whiteout', path: 'usr/lib64' },
      ],
    },
    {
      // GNU tar's 10240-byte records: the padding is part of the diff_id; two gzip members.
      padTo: 10_240,
      gzipMembers: 2,
      entries: [
        { type: 'dir', path: 'var', mtime: T + 3 },
        { type: 'dir', path: 'var/cache', mode: 0o750, mtime: T + 4 },
        { type: 'file', path: 'var/cache/fresh', content: 'only this' },
        { type: 'dir', path: 'etc', mtime: T + 5 },
        { type: 'whiteout', path: 'etc/keep' },
      ],
    },
  ],
};

/** Opaque directories: marker before the new children, after them, alone, and at the root of a subtree. */
const opaque: Stack = {
  name: 'opaque',
  layers: [
    {
      entries: [
        { type: 'dir', path: 'o1' },
        { type: 'file', path: 'o1/old', content: 'old' },
        { type: 'dir', path: 'o1/olddir' },
        { type: 'file', path: 'o1/olddir/x', content: 'x' },
        { type: 'dir', path: 'o2' },
        { type: 'file', path: 'o2/old', content: 'old' },
        { type: 'file', path: 'o2/same-name', content: 'lower' },
        { type: 'dir', path: 'o3' },
        { type: 'file', path: 'o3/old', content: 'old' },
        { type: 'dir', path: 'o3/deeper' },
        { type: 'dir', path: 'o3/deeper/still' },
        { type: 'file', path: 'o3/deeper/still/f', content: 'f' },
        { type: 'dir', path: 'untouched' },
        { type: 'file', path: 'untouched/f', content: 'kept' },
      ],
    },
    {
      entries: [
        // Marker first, then new children.
        { type: 'dir', path: 'o1', mtime: T },
        { type: 'opaque', path: 'o1' },
        { type: 'file', path: 'o1/new', content: 'new' },
        { type: 'dir', path: 'o1/newdir' },
        { type: 'file', path: 'o1/newdir/y', content: 'y' },
        // New children first, marker after them (a same-named child replaces the lower one).
        { type: 'dir', path: 'o2', mtime: T + 1 },
        { type: 'file', path: 'o2/new', content: 'new' },
        { type: 'file', path: 'o2/same-name', content: 'upper' },
        { type: 'opaque', path: 'o2' },
        // Marker alone: the directory stays, empty.
        { type: 'dir', path: 'o3', mode: 0o711, mtime: T + 2 },
        { type: 'opaque', path: 'o3' },
      ],
    },
    {
      entries: [
        // Opaque again over a directory that was opaque one layer down.
        { type: 'dir', path: 'o1', mtime: T + 3 },
        { type: 'opaque', path: 'o1' },
        { type: 'file', path: 'o1/third', content: '3' },
      ],
    },
  ],
};

/** Hardlinks within a layer and across layers, to a symlink, and broken up by a later replacement. */
const hardlinks: Stack = {
  name: 'hardlinks',
  layers: [
    {
      compression: 'none',
      entries: [
        { type: 'dir', path: 'bin' },
        { type: 'file', path: 'bin/tool', content: '#!/bin/sh\necho tool\n', mode: 0o755, uid: 10, gid: 20 },
        { type: 'hardlink', path: 'bin/tool-same-layer', target: 'bin/tool' },
        { type: 'symlink', path: 'bin/sl', target: 'tool' },
        { type: 'file', path: 'bin/replaced', content: 'v1' },
        { type: 'file', path: 'bin/unchanged', content: 'u' },
      ],
    },
    {
      compression: 'none',
      entries: [
        { type: 'dir', path: 'bin', mtime: T },
        // Links in layer 2 to files of layer 1.
        { type: 'hardlink', path: 'bin/tool-layer2', target: 'bin/tool' },
        { type: 'hardlink', path: 'bin/replaced-link', target: '/bin/replaced' },
        { type: 'hardlink', path: 'bin/sl-hard', target: './bin/sl' },
        { type: 'dir', path: 'elsewhere' },
        { type: 'dir', path: 'elsewhere/deep' },
        { type: 'hardlink', path: 'elsewhere/deep/tool', target: 'bin/tool' },
      ],
    },
    {
      compression: 'none',
      entries: [
        { type: 'dir', path: 'bin', mtime: T + 1 },
        // Replacing one name breaks its link; the others keep the old inode.
        { type: 'file', path: 'bin/replaced', content: 'v2' },
        { type: 'whiteout', path: 'bin/tool-same-layer' },
        // A link to a file whose other name was just replaced.
        { type: 'hardlink', path: 'bin/replaced-link2', target: 'bin/replaced' },
      ],
    },
  ],
};

/** A symlink replaced by a directory and back; a write through a symlinked parent. */
const symlinkFlip: Stack = {
  name: 'symlink-flip',
  layers: [
    {
      entries: [
        { type: 'dir', path: 'opt' },
        { type: 'dir', path: 'opt/v1' },
        { type: 'file', path: 'opt/v1/app', content: 'v1 app' },
        { type: 'symlink', path: 'opt/current', target: '/opt/v1' },
        { type: 'symlink', path: 'opt/rel', target: 'v1' },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 'opt', mtime: T },
        { type: 'dir', path: 'opt/current', mode: 0o750 },
        { type: 'file', path: 'opt/current/own', content: 'in the directory' },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 'opt', mtime: T + 1 },
        { type: 'symlink', path: 'opt/current', target: 'v1', uid: 7, gid: 8 },
      ],
    },
    {
      entries: [
        // Parent is a symlink: both follow it (inside the root) and write into opt/v1.
        { type: 'dir', path: 'opt/v1', mtime: T + 2 },
        { type: 'file', path: 'opt/rel/through-relative', content: 'via rel' },
        { type: 'file', path: 'opt/current/through-absolute', content: 'via current' },
      ],
    },
  ],
};

/** Mode, mtime and owner changes of the same paths; setuid, setgid, sticky. */
const metadata: Stack = {
  name: 'metadata',
  layers: [
    {
      entries: [
        { type: 'dir', path: 'srv' },
        { type: 'file', path: 'srv/f', content: 'same content', mode: 0o644 },
        { type: 'dir', path: 'srv/d', mode: 0o700 },
        { type: 'file', path: 'srv/d/child', content: 'kept across the re-declaration' },
        { type: 'file', path: 'srv/owned', content: 'o', mode: 0o600, uid: 1000, gid: 1000 },
        { type: 'dir', path: 'usr' },
        { type: 'dir', path: 'usr/bin' },
        { type: 'file', path: 'usr/bin/su', content: 'su', mode: 0o4755 },
        { type: 'file', path: 'usr/bin/wall', content: 'wall', mode: 0o2755, gid: 5 },
        { type: 'file', path: 'usr/bin/both', content: 'both', mode: 0o6750, uid: 0, gid: 50 },
        { type: 'dir', path: 'tmp', mode: 0o1777 },
        { type: 'dir', path: 'shared', mode: 0o2775, gid: 100 },
        { type: 'dir', path: 'shared/all', mode: 0o3777 },
        { type: 'file', path: 'odd-perms', content: 'x', mode: 0o1604 },
        { type: 'dir', path: 'home' },
        { type: 'dir', path: 'home/user', mode: 0o750, uid: 1000, gid: 1000 },
        { type: 'file', path: 'home/user/.profile', content: 'export A=1\n', uid: 1000, gid: 1000 },
        { type: 'symlink', path: 'home/user/link', target: '.profile', uid: 1000, gid: 1000 },
        { type: 'dir', path: 'nobody', mode: 0o555, uid: 65534, gid: 65534 },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 'srv', mode: 0o711, mtime: T },
        { type: 'file', path: 'srv/f', content: 'same content', mode: 0o600, mtime: T + 10 },
        { type: 'dir', path: 'srv/d', mode: 0o755, mtime: T + 20, uid: 33, gid: 33 },
        { type: 'file', path: 'srv/owned', content: 'o', mode: 0o640, uid: 2000, gid: 3000 },
        { type: 'dir', path: 'usr' },
        { type: 'dir', path: 'usr/bin', mtime: T + 30 },
        // setuid taken away, added elsewhere
        { type: 'file', path: 'usr/bin/su', content: 'su', mode: 0o755 },
        { type: 'file', path: 'usr/bin/ping', content: 'ping', mode: 0o4711 },
        { type: 'dir', path: 'tmp', mode: 0o777, mtime: T + 40 },
        { type: 'dir', path: 'home', mtime: T + 50 },
        { type: 'dir', path: 'home/user', mode: 0o700, uid: 1001, gid: 1001, mtime: T + 60 },
        { type: 'symlink', path: 'home/user/link', target: '/etc/passwd', uid: 0, gid: 1001, mtime: T + 70 },
      ],
    },
    {
      entries: [
        // Old mtimes are fine too (before the epoch of the lower layer).
        { type: 'dir', path: 'srv', mode: 0o755, mtime: 1_000_000_000 },
        { type: 'dir', path: 'srv/d', mode: 0o2750, mtime: 86_400 },
        { type: 'file', path: 'srv/f', content: 'same content', mode: 0o4644, mtime: 1 },
      ],
    },
  ],
};

/** A FIFO and character and block devices, replaced by other types and other numbers. */
const devices: Stack = {
  name: 'devices',
  layers: [
    {
      entries: [
        { type: 'dir', path: 'dev' },
        { type: 'fifo', path: 'dev/initctl', mode: 0o600 },
        { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
        { type: 'char', path: 'dev/tty', major: 5, minor: 0, mode: 0o666, gid: 5 },
        { type: 'block', path: 'dev/loop0', major: 7, minor: 0, mode: 0o660, gid: 6 },
        { type: 'block', path: 'dev/nvme0n1p300', major: 259, minor: 300, mode: 0o640 },
        // tar-stream writes device numbers as 6 octal digits (up to 262143): a minor past 16 bits still fits.
        { type: 'char', path: 'dev/big', major: 511, minor: 65_836, mode: 0o600, uid: 4, gid: 4 },
        { type: 'fifo', path: 'dev/becomes-dir', mode: 0o644 },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 'dev', mtime: T },
        { type: 'file', path: 'dev/initctl', content: 'now a file' },
        { type: 'block', path: 'dev/tty', major: 8, minor: 1, mode: 0o600 },
        { type: 'dir', path: 'dev/becomes-dir' },
        { type: 'fifo', path: 'dev/becomes-dir/pipe', mode: 0o622, uid: 1, gid: 2 },
        { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666, mtime: T + 1 },
      ],
    },
  ],
};

const LONG_COMPONENT = `n${'x'.repeat(250)}`; // 251 bytes: a whole path element near NAME_MAX
const deepPath = Array.from({ length: 40 }, (_, i) => `level-${String(i).padStart(2, '0')}`);
const deepDirs: Entry[] = deepPath.map((_, i) => ({ type: 'dir', path: deepPath.slice(0, i + 1).join('/'), mode: i % 2 === 0 ? 0o755 : 0o750 }));
const DEEP = deepPath.join('/');
const GNU_NAME = `gnu/${'g'.repeat(120)}/${'h'.repeat(60)}.txt`;
const PAX_NAME = `pax/${'p'.repeat(150)}/${LONG_COMPONENT}`;

/** Long names (PAX and GNU, for paths and link targets), non-ASCII names, deep nesting. */
const longNames: Stack = {
  name: 'long-names',
  layers: [
    {
      compression: 'none',
      entries: [
        { type: 'dir', path: 'pax' },
        { type: 'dir', path: `pax/${'p'.repeat(150)}` },
        { type: 'file', path: PAX_NAME, content: 'pax long name' },
        { type: 'dir', path: 'gnu', gnuLong: true },
        { type: 'dir', path: `gnu/${'g'.repeat(120)}`, gnuLong: true },
        { type: 'file', path: GNU_NAME, content: 'gnu long name', gnuLong: true },
        { type: 'symlink', path: 'gnu/long-target', target: `/${GNU_NAME}`, gnuLong: true },
        { type: 'symlink', path: 'pax/long-target', target: `../${PAX_NAME}` },
        { type: 'dir', path: 'unicode-é' },
        { type: 'file', path: 'unicode-é/ファイル', content: 'non-ASCII name' },
        ...deepDirs,
        { type: 'file', path: `${DEEP}/bottom`, content: 'forty levels down', mode: 0o640 },
      ],
    },
    {
      compression: 'gzip',
      entries: [
        { type: 'dir', path: 'links', mtime: T },
        { type: 'hardlink', path: `links/${LONG_COMPONENT}`, target: PAX_NAME },
        { type: 'hardlink', path: 'links/to-gnu', target: GNU_NAME, gnuLong: true },
        { type: 'dir', path: `gnu/${'g'.repeat(120)}`, mtime: T + 1, gnuLong: true },
        { type: 'whiteout', path: GNU_NAME },
        { type: 'dir', path: deepPath.slice(0, 30).join('/'), mtime: T + 2 },
        { type: 'whiteout', path: deepPath.slice(0, 31).join('/') },
      ],
    },
    {
      compression: 'zstd',
      entries: [{ type: 'dir', path: DEEP.slice(0, DEEP.lastIndexOf('/level-2')), mode: 0o700, mtime: T + 3 }],
    },
  ],
};

/** A file replaced by a directory and back, a directory (with contents) by a file, symlinks by files. */
const typeChanges: Stack = {
  name: 'type-changes',
  layers: [
    {
      entries: [
        { type: 'dir', path: 't' },
        { type: 'file', path: 't/a', content: 'file a' },
        { type: 'dir', path: 't/b' },
        { type: 'dir', path: 't/b/c' },
        { type: 'file', path: 't/b/c/d', content: 'deep in b' },
        { type: 'symlink', path: 't/s', target: 'a' },
        { type: 'file', path: 't/f2', content: 'f2' },
        { type: 'symlink', path: 't/to-dir', target: 'b' },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 't', mtime: T },
        { type: 'dir', path: 't/a', mode: 0o700 },
        { type: 'file', path: 't/a/inside', content: 'a is a directory now' },
        { type: 'file', path: 't/b', content: 'b was a directory with contents' },
        { type: 'file', path: 't/s', content: 'was a symlink' },
        { type: 'symlink', path: 't/f2', target: 'a/inside' },
        // Replacing a symlink to a directory replaces the link, not the directory it points to.
        { type: 'dir', path: 't/to-dir' },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 't', mtime: T + 1 },
        { type: 'file', path: 't/a', content: 'a is a file again', mode: 0o755 },
        { type: 'dir', path: 't/b', mode: 0o750 },
        { type: 'file', path: 't/b/new', content: 'b is a directory again (empty before this)' },
        { type: 'fifo', path: 't/s' },
      ],
    },
  ],
};

/** xattrs (user.* namespace) from PAX SCHILY.xattr records, on files and directories. */
const xattrs: Stack = {
  name: 'xattrs',
  xattrs: true,
  layers: [
    {
      entries: [
        { type: 'dir', path: 'x', pax: { 'SCHILY.xattr.user.dir': 'on a directory' } },
        { type: 'file', path: 'x/f', content: 'f', pax: { 'SCHILY.xattr.user.one': '1', 'SCHILY.xattr.user.two': 'zwei' } },
        { type: 'file', path: 'x/replaced', content: 'r', pax: { 'SCHILY.xattr.user.old': 'gone after layer 2' } },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 'x', mtime: T, pax: { 'SCHILY.xattr.user.dir': 'changed' } },
        { type: 'file', path: 'x/replaced', content: 'r2', pax: { 'SCHILY.xattr.user.new': 'new value' } },
        { type: 'file', path: 'x/plain', content: 'no xattrs' },
      ],
    },
  ],
};

/** Order within a layer and odd targets: duplicates, entries before their directory, whiteouts of nothing, through symlinks. */
const ordering: Stack = {
  name: 'ordering',
  layers: [
    {
      entries: [
        { type: 'dir', path: 'w' },
        { type: 'dir', path: 'w/sub' },
        { type: 'file', path: 'w/sub/lower', content: 'lower' },
        { type: 'file', path: 'w/f', content: 'lower' },
        { type: 'file', path: 'plain-file', content: 'a file' },
        { type: 'dir', path: 'real' },
        { type: 'symlink', path: 'link', target: 'real' },
        { type: 'dir', path: 'v1' },
        { type: 'file', path: 'v1/x', content: 'x' },
        { type: 'file', path: 'v1/y', content: 'y' },
        { type: 'symlink', path: 'cur', target: '/v1' },
        { type: 'dir', path: 'ro', mode: 0o555 },
        { type: 'file', path: 'ro/f', content: 'f', mode: 0o444 },
        // Children before their directory's entry (the entry's metadata wins).
        { type: 'file', path: 'd/a', content: 'a' },
        { type: 'dir', path: 'd/sub', mode: 0o700, mtime: T + 5 },
        { type: 'file', path: 'd/sub/b', content: 'b' },
        { type: 'dir', path: 'd', mode: 0o750, mtime: T },
        // The same path twice in one layer: the later entry wins, also across types.
        { type: 'dir', path: 'dup' },
        { type: 'file', path: 'dup/f', content: 'first' },
        { type: 'file', path: 'dup/f', content: 'second', mode: 0o600 },
        { type: 'dir', path: 'dup/x' },
        { type: 'file', path: 'dup/x', content: 'the file wins' },
        { type: 'dir', path: 'dup', mode: 0o700, mtime: T + 4 },
        { type: 'file', path: 'top', content: 'v1' },
      ],
    },
    {
      entries: [
        // Whiteout of a directory, then the directory again with new contents.
        { type: 'dir', path: 'w', mtime: T },
        { type: 'whiteout', path: 'w/sub' },
        { type: 'dir', path: 'w/sub', mtime: T },
        { type: 'file', path: 'w/sub/new', content: 'new' },
        // A whiteout after a same-layer file does not remove it.
        { type: 'file', path: 'w/f', content: 'upper' },
        { type: 'whiteout', path: 'w/f' },
        // Markers for things that are not there, or not directories.
        { type: 'opaque', path: 'no-such-dir' },
        { type: 'opaque', path: 'plain-file' },
        { type: 'whiteout', path: 'no-such-dir/x' },
        { type: 'whiteout', path: 'plain-file/x' },
        // Through symlinked parents: a directory, a whiteout.
        { type: 'dir', path: 'link/inner', mode: 0o700, mtime: T },
        { type: 'dir', path: 'real', mtime: T + 1 },
        { type: 'dir', path: 'v1', mtime: T + 2 },
        { type: 'whiteout', path: 'cur/x' },
        // Read-only directory: changed all the same.
        { type: 'dir', path: 'ro', mode: 0o500, mtime: T + 3 },
        { type: 'file', path: 'ro/g', content: 'g' },
        { type: 'whiteout', path: 'ro/f' },
        // A hardlink, then its target replaced, then another hardlink to the new target.
        { type: 'hardlink', path: 'g', target: 'top' },
        { type: 'file', path: 'top', content: 'v2' },
        { type: 'hardlink', path: 'h', target: 'top' },
      ],
    },
  ],
};

/** Names with `.`, `..` and a leading `/` (clamped to the root, as a chroot would); links through symlinked folders. */
const oddPaths: Stack = {
  name: 'odd-paths',
  layers: [
    {
      entries: [
        { type: 'dir', path: 'x' },
        { type: 'dir', path: 'y' },
        { type: 'file', path: './x/../y/file', content: 'f' },
        { type: 'file', path: '../../escape', content: 'clamped to the root' },
        { type: 'file', path: '/abs', content: 'absolute name' },
        { type: 'dir', path: 'v1' },
        { type: 'file', path: 'v1/y', content: 'y' },
        { type: 'symlink', path: 'cur', target: '/v1' },
        { type: 'dir', path: 'r' },
        { type: 'file', path: 'r/f', content: 'f' },
        { type: 'symlink', path: 'l', target: 'r' },
        { type: 'dir', path: 'd' },
        { type: 'file', path: 'd/a', content: 'a' },
        { type: 'file', path: 'd/b', content: 'b' },
      ],
    },
    {
      entries: [
        { type: 'dir', path: 'y', mtime: T },
        { type: 'hardlink', path: 'y/hl', target: '../x/../y/file' },
        { type: 'whiteout', path: '/abs' },
        // A hardlink whose target is named through a symlinked folder.
        { type: 'dir', path: 'v1', mtime: T + 1 },
        { type: 'hardlink', path: 'v1/hl', target: 'cur/y' },
        // A symlink to a folder replaced by another symlink: the folder is untouched.
        { type: 'symlink', path: 'l', target: 'r/f', mtime: T + 2 },
        // Whiteout, new file, opaque marker, and a whiteout of the new file, all in one folder.
        { type: 'dir', path: 'd', mtime: T + 3 },
        { type: 'whiteout', path: 'd/a' },
        { type: 'file', path: 'd/c', content: 'c' },
        { type: 'opaque', path: 'd' },
        { type: 'whiteout', path: 'd/c' },
      ],
    },
  ],
};

export const STACKS: Stack[] = [whiteouts, opaque, hardlinks, symlinkFlip, metadata, devices, longNames, typeChanges, xattrs, ordering, oddPaths];

/** The same stack with every layer in one compression (layers' own choices dropped). */
export function withCompression(stack: Stack, compression: 'gzip' | 'zstd' | 'none'): Stack {
  return { ...stack, name: `${stack.name}-${compression}`, layers: stack.layers.map(({ compression: _c, ...rest }) => ({ ...rest, compression })) };
}

/**
 * Stacks on which cs once differed from umoci (found by this oracle), kept as
 * regression cases now that src/layers/apply.ts agrees:
 * - opaque-lower-grandchild(-implicit), opaque-root: an opaque marker kept
 *   the lower contents of a subdirectory the same layer wrote into;
 * - whiteout-after-same-layer-child: `.wh.sub` after `sub/upper` in the same
 *   layer removed the new `sub/upper` (whiteouts must only hide lower layers).
 */
export const REGRESSIONS: Stack[] = [
  {
    name: 'opaque-lower-grandchild',
    layers: [
      { entries: [{ type: 'dir', path: 'o' }, { type: 'dir', path: 'o/sub' }, { type: 'file', path: 'o/sub/lower', content: 'lower' }, { type: 'file', path: 'o/gone', content: 'gone' }] },
      { entries: [{ type: 'dir', path: 'o', mtime: T }, { type: 'opaque', path: 'o' }, { type: 'dir', path: 'o/sub', mtime: T }, { type: 'file', path: 'o/sub/upper', content: 'upper' }] },
    ],
  },
  {
    name: 'opaque-lower-grandchild-implicit',
    layers: [
      { entries: [{ type: 'dir', path: 'o' }, { type: 'dir', path: 'o/sub' }, { type: 'file', path: 'o/sub/lower', content: 'lower' }] },
      { entries: [{ type: 'dir', path: 'o', mtime: T }, { type: 'file', path: 'o/sub/upper', content: 'upper' }, { type: 'opaque', path: 'o' }] },
    ],
  },
  {
    name: 'opaque-root',
    layers: [
      { entries: [{ type: 'dir', path: 'a' }, { type: 'file', path: 'a/lower', content: '1' }, { type: 'file', path: 'top', content: 't' }] },
      { entries: [{ type: 'opaque', path: '' }, { type: 'file', path: 'top2', content: 't2' }, { type: 'dir', path: 'a', mtime: T }, { type: 'file', path: 'a/upper', content: 'u' }] },
    ],
  },
  {
    name: 'whiteout-after-same-layer-child',
    layers: [
      { entries: [{ type: 'dir', path: 'w' }, { type: 'dir', path: 'w/sub' }, { type: 'file', path: 'w/sub/lower', content: 'lower' }] },
      { entries: [{ type: 'dir', path: 'w', mtime: T }, { type: 'file', path: 'w/sub/upper', content: 'upper' }, { type: 'whiteout', path: 'w/sub' }] },
    ],
  },
];

/**
 * Minimal stacks on which cs and umoci differ, each for one reason in
 * src/layers/apply.ts. `differences` are the lines diffTrees prints for them
 * today; the oracle test checks that nothing else differs, and marks the
 * full comparison `it.fails` until apply.ts is fixed.
 */
export interface KnownDifference {
  stack: Stack;
  bug: string;
  differences: string[];
}

export const KNOWN_DIFFERENCES: KnownDifference[] = [];

/** Stacks both tools refuse (the whole unpack fails). */
export const REFUSED: Stack[] = [
  {
    name: 'file-under-file',
    layers: [{ entries: [{ type: 'file', path: 'a', content: 'a file' }] }, { entries: [{ type: 'file', path: 'a/b', content: 'under a file' }] }],
  },
  {
    name: 'hardlink-to-whited-out',
    layers: [{ entries: [{ type: 'file', path: 'f', content: 'f' }] }, { entries: [{ type: 'whiteout', path: 'f' }, { type: 'hardlink', path: 'g', target: 'f' }] }],
  },
];

/**
 * Differences the oracle found and apply.ts has since fixed: the root entry's
 * mode and owner, PAX uid/gid/mtime, and lower directories keeping their
 * times. They run with every other stack now.
 */
export const FIXED_DIFFERENCES: KnownDifference[] = [
  {
    bug:
      'xattrs of a directory that a later layer re-declares without them are kept: apply.ts only reports xattrs to set ' +
      '(onXattrs), never that a directory\'s set is now empty; umoci clears the xattrs not in the header',
    stack: {
      name: 'xattrs-cleared',
      xattrs: true,
      layers: [
        { entries: [{ type: 'dir', path: 'x', pax: { 'SCHILY.xattr.user.a': '1' } }] },
        { entries: [{ type: 'dir', path: 'x', mtime: T }] },
      ],
    },
    differences: ['x: xattrs umoci=undefined cs={"user.a":"1"}'],
  },
  {
    bug: 'the root entry "./" sets only the mtime: its mode, uid and gid are ignored (applyEntry returns early for an empty path); umoci (and Docker) apply them to the rootfs',
    stack: {
      name: 'root-entry',
      layers: [
        { entries: [{ type: 'dir', path: './', mode: 0o750, uid: 5, gid: 6 }, { type: 'file', path: 'f', content: 'x' }] },
        { entries: [{ type: 'dir', path: '.', mode: 0o700, uid: 7, gid: 8, mtime: T }] },
      ],
    },
    differences: ['.: perm umoci="0700" cs="0755"', '.: uid umoci=7 cs=0', '.: gid umoci=8 cs=0'],
  },
  {
    bug:
      "PAX records for uid, gid and mtime are ignored: tar-stream's extract applies only path/linkpath/size from PAX, and " +
      'apply.ts uses header.uid/gid/mtime, so an owner above 2097151 (Go writes it as PAX uid/gid) becomes 0 and sub-second ' +
      'PAX mtimes are truncated',
    stack: {
      name: 'pax-owner-mtime',
      layers: [{ entries: [{ type: 'dir', path: 'p' }, { type: 'file', path: 'p/f', content: 'x', pax: { mtime: '1600000000.25', uid: '3000000', gid: '3000001' } }] }],
    },
    differences: ['p/f: uid umoci=3000000 cs=0', 'p/f: gid umoci=3000001 cs=0', 'p/f: mtime umoci="1600000000250000000" cs="1600000000000000000"'],
  },
  {
    bug:
      'a lower directory whose contents a layer changes without carrying an entry for it gets the time of unpacking as its ' +
      'mtime (only directories with an entry in the layer get their times restored), so the rootfs differs from run to run; ' +
      "umoci keeps the lower layer's mtime",
    stack: {
      name: 'implicit-parent-mtime',
      layers: [
        { entries: [{ type: 'dir', path: 'a' }, { type: 'file', path: 'a/f', content: 'one' }, { type: 'dir', path: 'b' }, { type: 'file', path: 'b/g', content: 'g' }] },
        { entries: [{ type: 'file', path: 'a/new', content: 'two' }] },
        { entries: [{ type: 'whiteout', path: 'b/g' }] },
      ],
    },
    differences: ['a: mtime umoci="1600000000000000000" cs="unpack-time"', 'b: mtime umoci="1600000000000000000" cs="unpack-time"'],
  },
];
