/**
 * Hostile layers: a catalog of tars (or stacks of tars: benign layers, then
 * a hostile one) that try to reach outside the root they are applied onto.
 *
 * Every case runs in a fresh world (support/world.ts): a parent folder
 * holding the root `dest/`, a sibling `victim/` (files, a FIFO, nested
 * folders, a symlink) and a sibling `dest-evil/`. After the layer, the
 * outside must be exactly as it was: same paths, types, modes, owners,
 * sizes, inodes, link counts, contents, mtimes, ctimes and atimes (atimes
 * are set far behind mtimes, so on this relatime mount even a read, a
 * listing or a readlink outside shows), and nothing new beside dest.
 *
 * Each case states its outcome: either applyLayer rejects with a LayerError
 * whose message (and code) is given, or it succeeds and the result inside
 * dest is the chrooted reading of the layer (`link -> /etc` then
 * `link/passwd` writes dest/etc/passwd).
 */
import { linkSync, lstatSync, lutimesSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { LayerLimits } from '../../src/layers/apply.js';
import { LayerError } from '../../src/util/errors.js';
import { ErofsImage } from '../helpers/erofs-read.js';
import { normalise } from './oracle-support/oracle.js';
import { diffTrees, snapshot } from './oracle-support/tree.js';
import { buildInMemory } from './support/image.js';
import { apply, kindOf, modeOf, tree, what, type Layer } from './support/inspect.js';
import { blockDevice, charDevice, dir, fifo, file, hardlink, layerTar, rawRecord, rawTar, symlink, viaGenerator, whiteout } from './support/tar.js';
import { createWorld, destroyWorld, outsideChanges, type World } from './support/world.js';

const PWNED = 'pwned\n';
const OTHER_TIME = new Date('2005-05-05T05:05:05Z');

interface Case {
  family: string;
  what: string;
  /** The layers, bottom first; the last one is the hostile one. */
  layers: (w: World) => Layer[];
  limits?: Partial<LayerLimits>;
  /** The hostile layer must be refused with this message (and code). */
  rejects?: { message: RegExp; code?: string };
  /** What dest holds afterwards (after a success, or after a refusal when given). */
  check?: (w: World) => void;
  /** Makes devices or chowns (privileged mode): skipped when not running as root. */
  needsRoot?: boolean;
}

const isRoot = process.getuid?.() === 0;

/** What is at `rel` inside the root. */
const at = (w: World, rel: string): string => what(join(w.dest, rel));
/** The chrooted place of an absolute host path: `${dest}${abs}`. */
const inRoot = (w: World, abs: string): string => join(w.dest, abs);

const chain = (length: number, end: string) =>
  Array.from({ length }, (_, i) => symlink(`l${i}`, i === length - 1 ? end : `l${i + 1}`));

const deepName = (levels: number, leaf: string): string => `${'a/'.repeat(levels)}${leaf}`;

const CASES: Case[] = [
  // ---------------------------------------------------------------- absolute symlinks
  {
    family: 'absolute symlink',
    what: 'link -> / then link/x writes dest/x',
    layers: () => [[symlink('link', '/'), file('link/x', PWNED)]],
    check: (w) => {
      expect(at(w, 'link')).toBe('symlink->/');
      expect(at(w, 'x')).toBe(`file:${PWNED}`);
    },
  },
  {
    family: 'absolute symlink',
    what: 'link -> /etc then link/passwd writes dest/etc/passwd',
    layers: () => [[symlink('link', '/etc'), file('link/passwd', 'root::0:0::/:/bin/sh\n')]],
    check: (w) => {
      expect(at(w, 'etc/passwd')).toBe('file:root::0:0::/:/bin/sh\n');
      expect(at(w, 'link')).toBe('symlink->/etc');
    },
  },
  {
    family: 'absolute symlink',
    what: 'link -> /etc in a lower layer, link/shadow in the next',
    layers: () => [[symlink('link', '/etc')], [file('link/shadow', PWNED, { mode: 0o640 })]],
    check: (w) => {
      expect(at(w, 'etc/shadow')).toBe(`file:${PWNED}`);
      expect(modeOf(join(w.dest, 'etc/shadow'))).toBe(0o640);
    },
  },
  {
    family: 'absolute symlink',
    what: 'link -> <absolute victim path> then link/secret stays inside',
    layers: (w) => [[symlink('link', w.victim), file('link/secret', PWNED)]],
    check: (w) => expect(what(join(inRoot(w, w.victim), 'secret'))).toBe(`file:${PWNED}`),
  },
  {
    family: 'absolute symlink',
    what: 'link -> <absolute victim path> then a directory entry link/nested/ with mode 0777',
    layers: (w) => [[symlink('link', w.victim), dir('link/nested/', { mode: 0o777, mtime: OTHER_TIME })]],
    check: (w) => {
      const nested = join(inRoot(w, w.victim), 'nested');
      expect(kindOf(nested)).toBe('dir');
      expect(modeOf(nested)).toBe(0o777);
      expect(lstatSync(nested).mtime.getTime()).toBe(OTHER_TIME.getTime());
    },
  },
  {
    family: 'absolute symlink',
    what: 'a file entry over link -> <victim file> replaces the link, not the file',
    layers: (w) => [[symlink('link', `${w.victim}/secret`)], [file('link', PWNED, { mode: 0o666 })]],
    check: (w) => {
      expect(at(w, 'link')).toBe(`file:${PWNED}`);
      expect(modeOf(join(w.dest, 'link'))).toBe(0o666);
    },
  },

  // ---------------------------------------------------------------- ../ symlinks
  {
    family: '../ symlink',
    what: 'up -> ../../.. then up/victim/secret writes dest/victim/secret',
    layers: () => [[symlink('up', '../../..'), file('up/victim/secret', PWNED)]],
    check: (w) => expect(at(w, 'victim/secret')).toBe(`file:${PWNED}`),
  },
  {
    family: '../ symlink',
    what: 'up -> .. then up/dest-evil/secret writes dest/dest-evil/secret',
    layers: () => [[symlink('up', '..'), file('up/dest-evil/secret', PWNED)]],
    check: (w) => expect(at(w, 'dest-evil/secret')).toBe(`file:${PWNED}`),
  },
  {
    family: '../ symlink',
    what: 'd/up -> ../../victim inside a folder, then d/up/secret',
    layers: () => [[dir('d/'), symlink('d/up', '../../victim'), file('d/up/secret', PWNED)]],
    check: (w) => {
      expect(at(w, 'victim/secret')).toBe(`file:${PWNED}`);
      expect(at(w, 'd/up')).toBe('symlink->../../victim');
    },
  },
  {
    family: '../ symlink',
    what: 'up -> ../victim then a symlink up/evil -> / is made inside dest',
    layers: () => [[symlink('up', '../victim'), symlink('up/evil', '/')]],
    check: (w) => expect(at(w, 'victim/evil')).toBe('symlink->/'),
  },

  // ---------------------------------------------------------------- chains of links
  {
    family: 'symlink chain',
    what: 'l0 -> l1 -> l2 -> ../victim then l0/x',
    layers: () => [[...chain(3, '../victim'), file('l0/x', PWNED)]],
    check: (w) => expect(at(w, 'victim/x')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink chain',
    what: 'mixed chain a -> /b, b -> ../c, c -> ../../victim then a/x',
    layers: () => [[symlink('a', '/b'), symlink('b', '../c'), symlink('c', '../../victim'), file('a/x', PWNED)]],
    check: (w) => expect(at(w, 'victim/x')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink chain',
    what: 'a loop a -> b -> a then a/x is refused',
    layers: () => [[symlink('a', 'b'), symlink('b', 'a'), file('a/x', PWNED)]],
    rejects: { message: /too many levels of symbolic links/, code: 'SYMLINK_LOOP' },
    check: (w) => expect(tree(w.dest)).toEqual(['a', 'b']),
  },
  {
    family: 'symlink chain',
    what: 'a self loop a -> a then a/x is refused',
    layers: () => [[symlink('a', 'a'), file('a/x', PWNED)]],
    rejects: { message: /too many levels of symbolic links/, code: 'SYMLINK_LOOP' },
  },
  {
    family: 'symlink chain',
    what: 'a loop through a folder (a -> b/c, b/c -> ../a) is refused',
    layers: () => [[dir('b/'), symlink('b/c', '../a'), symlink('a', 'b/c'), file('a/x', PWNED)]],
    rejects: { message: /too many levels of symbolic links/, code: 'SYMLINK_LOOP' },
  },
  {
    family: 'symlink chain',
    what: 'a chain of 256 links (one more than allowed) to ../victim is refused',
    layers: () => [[...chain(256, '../victim'), file('l0/x', PWNED)]],
    rejects: { message: /too many levels of symbolic links/, code: 'SYMLINK_LOOP' },
    check: (w) => expect(kindOf(join(w.dest, 'victim'))).toBe('missing'),
  },
  {
    family: 'symlink chain',
    what: 'a chain of exactly 255 links is followed, inside the root',
    layers: () => [[...chain(255, '../victim'), file('l0/x', PWNED)]],
    check: (w) => expect(at(w, 'victim/x')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink chain',
    what: 'a chain of 300 links in front of a whiteout is refused',
    layers: () => [[...chain(300, '../victim')], [whiteout('l0/.wh.secret')]],
    rejects: { message: /too many levels of symbolic links/, code: 'SYMLINK_LOOP' },
  },
  {
    family: 'symlink chain',
    what: 'a chain of 300 links in front of a hardlink target is refused',
    layers: () => [[...chain(300, '../victim'), file('victim/secret', 'decoy')], [hardlink('h', 'l0/secret')]],
    rejects: { message: /too many levels of symbolic links/, code: 'SYMLINK_LOOP' },
  },

  // ---------------------------------------------------------------- hardlinks out of the root
  {
    family: 'hardlink out of the root',
    what: 'linkname ../../victim/secret is refused',
    layers: () => [[hardlink('h', '../../victim/secret')]],
    rejects: { message: /does not exist in the image/, code: 'LAYER_BAD_LINK' },
    check: (w) => expect(tree(w.dest)).toEqual([]),
  },
  {
    family: 'hardlink out of the root',
    what: 'absolute linkname /etc/passwd is refused',
    layers: () => [[hardlink('h', '/etc/passwd')]],
    rejects: { message: /does not exist in the image/, code: 'LAYER_BAD_LINK' },
  },
  {
    family: 'hardlink out of the root',
    what: 'linkname <absolute victim path>/secret is refused',
    layers: (w) => [[hardlink('h', `${w.victim}/secret`)]],
    rejects: { message: /does not exist in the image/, code: 'LAYER_BAD_LINK' },
  },
  {
    family: 'hardlink out of the root',
    what: 'through a symlinked parent (l -> ../victim, h => l/secret) is refused',
    layers: () => [[symlink('l', '../victim'), hardlink('h', 'l/secret')]],
    rejects: { message: /does not exist in the image/, code: 'LAYER_BAD_LINK' },
  },
  {
    family: 'hardlink out of the root',
    what: 'through an absolute symlinked parent in a lower layer is refused',
    layers: (w) => [[symlink('l', w.victim)], [hardlink('h', 'l/nested/deep')]],
    rejects: { message: /does not exist in the image/, code: 'LAYER_BAD_LINK' },
  },
  {
    family: 'hardlink out of the root',
    what: 'through l -> ../.. it links the copy inside the root',
    layers: () => [[file('victim/secret', 'decoy')], [symlink('l', '../..'), hardlink('h', 'l/victim/secret')]],
    check: (w) => {
      expect(at(w, 'h')).toBe('file:decoy');
      expect(lstatSync(join(w.dest, 'h')).ino).toBe(lstatSync(join(w.dest, 'victim/secret')).ino);
    },
  },
  {
    family: 'hardlink out of the root',
    what: 'a hardlink to the root itself (..) is refused',
    layers: () => [[hardlink('h', '..')]],
    rejects: { message: /points at the root/, code: 'LAYER_BAD_LINK' },
  },
  {
    family: 'hardlink out of the root',
    what: "a hardlink to a directory d is refused",
    layers: () => [[dir('d/'), hardlink('h', 'd')]],
    rejects: { message: /points at a directory/, code: 'LAYER_BAD_LINK' },
  },

  {
    family: 'hardlink out of the root',
    what: 'a hardlink with an empty linkname is refused',
    layers: () => [rawTar([rawRecord({ name: 'h', typeflag: '1' })])],
    rejects: { message: /points at the root/ },
    check: (w) => expect(tree(w.dest)).toEqual([]),
  },

  // ---------------------------------------------------------------- symlink replaces a directory (two layers)
  {
    family: 'symlink replaces a directory',
    what: 'layer 1 d/, layer 2 d -> <absolute victim> and d/file',
    layers: (w) => [[dir('d/'), file('d/keep', 'kept')], [symlink('d', w.victim), file('d/file', PWNED)]],
    check: (w) => {
      expect(at(w, 'd')).toBe(`symlink->${w.victim}`);
      expect(what(join(inRoot(w, w.victim), 'file'))).toBe(`file:${PWNED}`);
    },
  },
  {
    family: 'symlink replaces a directory',
    what: 'layer 1 d/, layer 2 d -> ../victim and d/secret',
    layers: () => [[dir('d/')], [symlink('d', '../victim'), file('d/secret', PWNED)]],
    check: (w) => expect(at(w, 'victim/secret')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink replaces a directory',
    what: 'layer 1 d/nested/, layer 2 d -> ../victim and d/nested/deep',
    layers: () => [[dir('d/'), dir('d/nested/')], [symlink('d', '../victim'), file('d/nested/deep', PWNED)]],
    check: (w) => expect(at(w, 'victim/nested/deep')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink replaces a directory',
    what: 'layer 1 d/x, layer 2 d -> ../victim and a whiteout d/.wh.secret',
    layers: () => [[file('d/x', 'x')], [symlink('d', '../victim'), whiteout('d/.wh.secret')]],
    check: (w) => expect(tree(w.dest)).toEqual(['d']),
  },

  // ---------------------------------------------------------------- the same within one layer
  {
    family: 'symlink replaces a directory in one layer',
    what: 'd/, d -> ../victim, d/secret',
    layers: () => [[dir('d/'), symlink('d', '../victim'), file('d/secret', PWNED)]],
    check: (w) => {
      expect(at(w, 'd')).toBe('symlink->../victim');
      expect(at(w, 'victim/secret')).toBe(`file:${PWNED}`);
    },
  },
  {
    family: 'symlink replaces a directory in one layer',
    what: 'a/b/, a -> ../victim, a/b/c',
    layers: () => [[dir('a/'), dir('a/b/'), symlink('a', '../victim'), file('a/b/c', PWNED)]],
    check: (w) => expect(at(w, 'victim/b/c')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink replaces a directory in one layer',
    what: 'd/ with an mtime, then d -> ../victim (directory times are set at the end)',
    layers: () => [[dir('d/', { mtime: OTHER_TIME }), symlink('d', '../victim')]],
    check: (w) => expect(at(w, 'd')).toBe('symlink->../victim'),
  },
  {
    family: 'symlink replaces a directory in one layer',
    what: 'd/nested/ with an mtime, then d -> <absolute victim> replaced once more by d -> ../victim',
    layers: (w) => [[dir('d/'), dir('d/nested/', { mtime: OTHER_TIME }), symlink('d', w.victim), symlink('d', '../victim')]],
    check: (w) => expect(at(w, 'd')).toBe('symlink->../victim'),
  },

  // ---------------------------------------------------------------- entry names with ../
  {
    family: 'name with ../',
    what: '../victim/x lands in dest/victim/x',
    layers: () => [[file('../victim/x', PWNED)]],
    check: (w) => expect(tree(w.dest)).toEqual(['victim', 'victim/x']),
  },
  {
    family: 'name with ../',
    what: 'a/../../victim/x lands in dest/victim/x',
    layers: () => [[file('a/../../victim/x', PWNED)]],
    check: (w) => expect(at(w, 'victim/x')).toBe(`file:${PWNED}`),
  },
  {
    family: 'name with ../',
    what: '../../../../../../victim/secret lands in dest/victim/secret',
    layers: () => [[file('../../../../../../victim/secret', PWNED)]],
    check: (w) => expect(at(w, 'victim/secret')).toBe(`file:${PWNED}`),
  },
  {
    family: 'name with ../',
    what: 'a directory entry ../victim/ with mode 0777',
    layers: () => [[dir('../victim/', { mode: 0o777 })]],
    check: (w) => expect(modeOf(join(w.dest, 'victim'))).toBe(0o777),
  },
  {
    family: 'name with ../',
    what: 'a directory entry .. applies to the root itself (mode and mtime, as the root entry does)',
    layers: () => [[dir('..', { mode: 0o777, mtime: OTHER_TIME })]],
    check: (w) => {
      // Cleaned as if chrooted, the name is the root: like "./", it sets the root's mode and time.
      expect(modeOf(w.dest)).toBe(0o777);
      expect(lstatSync(w.dest).mtime.getTime()).toBe(OTHER_TIME.getTime());
    },
  },
  {
    family: 'name with ../',
    what: 'a symlink ../victim/link-to-secret lands in dest',
    layers: () => [[symlink('../victim/link-to-secret', '/etc/shadow')]],
    check: (w) => expect(at(w, 'victim/link-to-secret')).toBe('symlink->/etc/shadow'),
  },

  // ---------------------------------------------------------------- absolute names
  {
    family: 'absolute name',
    what: '/victim/x lands in dest/victim/x',
    layers: () => [[file('/victim/x', PWNED)]],
    check: (w) => expect(tree(w.dest)).toEqual(['victim', 'victim/x']),
  },
  {
    family: 'absolute name',
    what: '<absolute victim path>/secret lands below dest',
    layers: (w) => [[file(`${w.victim}/secret`, PWNED)]],
    check: (w) => expect(what(join(inRoot(w, w.victim), 'secret'))).toBe(`file:${PWNED}`),
  },
  {
    family: 'absolute name',
    what: '//victim//./x with doubled slashes',
    layers: () => [[file('//victim//./x', PWNED)]],
    check: (w) => expect(at(w, 'victim/x')).toBe(`file:${PWNED}`),
  },
  {
    family: 'absolute name',
    what: 'a directory entry / applies to the root itself (mode and mtime, as the root entry does)',
    layers: () => [[dir('/', { mode: 0o777, mtime: OTHER_TIME })]],
    check: (w) => {
      // Cleaned as if chrooted, the name is the root: like "./", it sets the root's mode and time.
      expect(modeOf(w.dest)).toBe(0o777);
      expect(lstatSync(w.dest).mtime.getTime()).toBe(OTHER_TIME.getTime());
    },
  },

  // ---------------------------------------------------------------- whiteouts of .. and of the root
  {
    family: 'whiteout of .. or the root',
    what: '.wh... (hides ..) is refused',
    layers: () => [[whiteout('.wh...')]],
    rejects: { message: /invalid whiteout/, code: 'LAYER_BAD_WHITEOUT' },
  },
  {
    family: 'whiteout of .. or the root',
    what: 'd/.wh... is refused',
    layers: () => [[dir('d/')], [whiteout('d/.wh...')]],
    rejects: { message: /invalid whiteout/, code: 'LAYER_BAD_WHITEOUT' },
    check: (w) => expect(kindOf(join(w.dest, 'd'))).toBe('dir'),
  },
  {
    family: 'whiteout of .. or the root',
    what: '.wh. (hides the folder itself) is refused',
    layers: () => [[file('keep', 'kept')], [whiteout('.wh.')]],
    rejects: { message: /invalid whiteout/, code: 'LAYER_BAD_WHITEOUT' },
    check: (w) => expect(at(w, 'keep')).toBe('file:kept'),
  },
  {
    family: 'whiteout of .. or the root',
    what: '.wh.. (hides .) is refused',
    layers: () => [[whiteout('.wh..')]],
    rejects: { message: /invalid whiteout/, code: 'LAYER_BAD_WHITEOUT' },
  },
  {
    family: 'whiteout of .. or the root',
    what: '../.wh.victim removes dest/victim only',
    layers: () => [[file('victim/x', 'x')], [whiteout('../.wh.victim')]],
    check: (w) => expect(tree(w.dest)).toEqual([]),
  },
  {
    family: 'whiteout of .. or the root',
    what: '../.wh.dest does not remove the root',
    layers: () => [[file('keep', 'kept')], [whiteout('../.wh.dest')]],
    check: (w) => expect(tree(w.dest)).toEqual(['keep']),
  },

  // ---------------------------------------------------------------- whiteouts through symlinks
  {
    family: 'whiteout through a symlink',
    what: 'l -> ../victim in a lower layer, then l/.wh.secret',
    layers: () => [[symlink('l', '../victim')], [whiteout('l/.wh.secret')]],
    check: (w) => expect(tree(w.dest)).toEqual(['l']),
  },
  {
    family: 'whiteout through a symlink',
    what: 'l -> <absolute victim> and l/.wh.nested in one layer',
    layers: (w) => [[symlink('l', w.victim), whiteout('l/.wh.nested')]],
    check: (w) => expect(tree(w.dest)).toEqual(['l']),
  },
  {
    family: 'whiteout through a symlink',
    what: 'l -> ../victim removes the copy inside the root',
    layers: () => [[file('victim/secret', 'decoy'), file('victim/other', 'other'), symlink('l', '../victim')], [whiteout('l/.wh.secret')]],
    check: (w) => expect(tree(w.dest)).toEqual(['l', 'victim', 'victim/other']),
  },
  {
    family: 'whiteout through a symlink',
    what: 'l -> <absolute victim>/nested then l/.wh.inner',
    layers: (w) => [[symlink('l', `${w.victim}/nested`)], [whiteout('l/.wh.inner')]],
    check: (w) => expect(tree(w.dest)).toEqual(['l']),
  },
  {
    family: 'whiteout through a symlink',
    what: 'a whiteout of the link itself removes the link, not its target',
    layers: () => [[symlink('l', '../victim'), symlink('s', '../victim/secret')], [whiteout('.wh.l'), whiteout('.wh.s')]],
    check: (w) => expect(tree(w.dest)).toEqual([]),
  },

  // ---------------------------------------------------------------- opaque markers
  {
    family: 'opaque marker in a symlinked folder',
    what: 'l -> ../victim in a lower layer, then l/.wh..wh..opq',
    layers: () => [[symlink('l', '../victim')], [whiteout('l/.wh..wh..opq')]],
    check: (w) => expect(tree(w.dest)).toEqual(['l']),
  },
  {
    family: 'opaque marker in a symlinked folder',
    what: 'l -> <absolute victim> and l/.wh..wh..opq in one layer',
    layers: (w) => [[symlink('l', w.victim), whiteout('l/.wh..wh..opq'), file('l/new', 'new')]],
    check: (w) => expect(what(join(inRoot(w, w.victim), 'new'))).toBe('file:new'),
  },
  {
    family: 'opaque marker in a symlinked folder',
    what: 'marker for d/, then d is replaced by d -> ../victim in the same layer',
    layers: () => [[dir('d/'), file('d/old', 'old')], [whiteout('d/.wh..wh..opq'), symlink('d', '../victim')]],
    check: (w) => expect(tree(w.dest)).toEqual(['d']),
  },
  {
    family: 'opaque marker in a symlinked folder',
    what: 'marker for a/nested/, then a is replaced by a -> ../victim',
    layers: () => [[dir('a/'), dir('a/nested/'), file('a/nested/old', 'old')], [whiteout('a/nested/.wh..wh..opq'), symlink('a', '../victim')]],
    check: (w) => expect(tree(w.dest)).toEqual(['a']),
  },
  {
    family: 'opaque marker in a symlinked folder',
    what: '../.wh..wh..opq makes the root opaque, nothing more',
    layers: () => [[file('old', 'old'), dir('olddir/')], [whiteout('../.wh..wh..opq'), file('new', 'new')]],
    check: (w) => expect(tree(w.dest)).toEqual(['new']),
  },

  // ---------------------------------------------------------------- prefix confusion
  {
    family: 'prefix confusion (dest-evil)',
    what: '../dest-evil/x lands in dest/dest-evil/x',
    layers: () => [[file('../dest-evil/x', PWNED)]],
    check: (w) => expect(tree(w.dest)).toEqual(['dest-evil', 'dest-evil/x']),
  },
  {
    family: 'prefix confusion (dest-evil)',
    what: 'l -> ../dest-evil then l/secret',
    layers: () => [[symlink('l', '../dest-evil'), file('l/secret', PWNED)]],
    check: (w) => expect(at(w, 'dest-evil/secret')).toBe(`file:${PWNED}`),
  },
  {
    family: 'prefix confusion (dest-evil)',
    what: '<absolute dest-evil path>/sub/file as a name',
    layers: (w) => [[file(`${w.evil}/sub/file`, PWNED)]],
    check: (w) => expect(what(join(inRoot(w, w.evil), 'sub/file'))).toBe(`file:${PWNED}`),
  },
  {
    family: 'prefix confusion (dest-evil)',
    what: 'hardlink to ../dest-evil/secret is refused',
    layers: () => [[hardlink('h', '../dest-evil/secret')]],
    rejects: { message: /does not exist in the image/, code: 'LAYER_BAD_LINK' },
  },
  {
    family: 'prefix confusion (dest-evil)',
    what: 'l -> <absolute dest-evil path>, then l/.wh.sub and l/.wh..wh..opq',
    layers: (w) => [[symlink('l', w.evil)], [whiteout('l/.wh.sub'), whiteout('l/.wh..wh..opq')]],
    check: (w) => expect(tree(w.dest)).toEqual(['l']),
  },
  {
    family: 'prefix confusion (dest-evil)',
    what: '../dest-evil/.wh.secret',
    layers: () => [[whiteout('../dest-evil/.wh.secret')]],
    check: (w) => expect(tree(w.dest)).toEqual([]),
  },

  // ---------------------------------------------------------------- symlinks to FIFOs and devices outside
  {
    family: 'symlink to a FIFO or device outside',
    what: 'f -> ../victim/fifo, then a file entry f replaces the link',
    layers: () => [[symlink('f', '../victim/fifo')], [file('f', PWNED)]],
    check: (w) => expect(at(w, 'f')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink to a FIFO or device outside',
    what: 'f -> <absolute victim>/fifo, h => f, then a file h',
    layers: (w) => [[symlink('f', `${w.victim}/fifo`), hardlink('h', 'f'), file('h', PWNED)]],
    check: (w) => {
      expect(at(w, 'f')).toBe(`symlink->${w.victim}/fifo`);
      expect(at(w, 'h')).toBe(`file:${PWNED}`);
    },
  },
  {
    family: 'symlink to a FIFO or device outside',
    what: 'n -> /dev/null, then a file entry n',
    layers: () => [[symlink('n', '/dev/null'), file('n', PWNED)]],
    check: (w) => expect(at(w, 'n')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink to a FIFO or device outside',
    what: 'z -> /dev/zero, then z/x is made inside the root',
    layers: () => [[symlink('z', '/dev/zero'), file('z/x', PWNED)]],
    check: (w) => expect(at(w, 'dev/zero/x')).toBe(`file:${PWNED}`),
  },
  {
    family: 'symlink to a FIFO or device outside',
    what: 'f -> ../victim/fifo, then a FIFO entry f',
    layers: () => [[symlink('f', '../victim/fifo'), fifo('f', { mode: 0o600 })]],
    check: (w) => {
      expect(at(w, 'f')).toBe('fifo');
      expect(modeOf(join(w.dest, 'f'))).toBe(0o600);
    },
  },
  {
    family: 'symlink to a FIFO or device outside',
    what: 'f -> ../victim/fifo, then a directory entry f/',
    layers: () => [[symlink('f', '../victim/fifo')], [dir('f/', { mode: 0o700 })]],
    check: (w) => {
      expect(at(w, 'f')).toBe('dir');
      expect(modeOf(join(w.dest, 'f'))).toBe(0o700);
    },
  },

  // ---------------------------------------------------------------- directory replaces a symlink
  {
    family: 'directory replaces a symlink',
    what: 'l -> ../victim below, l/ with mode 0777 and l/secret above',
    layers: () => [[symlink('l', '../victim')], [dir('l/', { mode: 0o777 }), file('l/secret', PWNED)]],
    check: (w) => {
      expect(modeOf(join(w.dest, 'l'))).toBe(0o777);
      expect(tree(w.dest)).toEqual(['l', 'l/secret']);
    },
  },
  {
    family: 'directory replaces a symlink',
    what: 'l -> <absolute victim>, then l/ with mode 0700 in one layer',
    layers: (w) => [[symlink('l', w.victim), dir('l/', { mode: 0o700, mtime: OTHER_TIME })]],
    check: (w) => {
      expect(at(w, 'l')).toBe('dir');
      expect(modeOf(join(w.dest, 'l'))).toBe(0o700);
      expect(lstatSync(join(w.dest, 'l')).mtime.getTime()).toBe(OTHER_TIME.getTime());
    },
  },
  {
    family: 'directory replaces a symlink',
    what: 'l -> ../victim/nested, then l/ with an owner 1234:5678',
    needsRoot: true,
    layers: () => [[symlink('l', '../victim/nested'), dir('l/', { uid: 1234, gid: 5678 })]],
    check: (w) => {
      const info = lstatSync(join(w.dest, 'l'));
      expect(info.isDirectory()).toBe(true);
      expect([info.uid, info.gid]).toEqual([1234, 5678]);
    },
  },

  // ---------------------------------------------------------------- hardlink to an outside symlink
  {
    family: 'hardlink to a symlink pointing outside',
    what: 's -> ../victim/secret, h => s below; a file h above',
    layers: () => [[symlink('s', '../victim/secret'), hardlink('h', 's')], [file('h', PWNED)]],
    check: (w) => {
      expect(at(w, 's')).toBe('symlink->../victim/secret');
      expect(at(w, 'h')).toBe(`file:${PWNED}`);
    },
  },
  {
    family: 'hardlink to a symlink pointing outside',
    what: 's -> <absolute victim>/secret, h => s, file h, all in one layer',
    layers: (w) => [[symlink('s', `${w.victim}/secret`), hardlink('h', 's'), file('h', PWNED)]],
    check: (w) => expect(at(w, 'h')).toBe(`file:${PWNED}`),
  },
  {
    family: 'hardlink to a symlink pointing outside',
    what: 's -> ../victim, h => s, then h/secret is written inside the root',
    layers: () => [[symlink('s', '../victim'), hardlink('h', 's'), file('h/secret', PWNED)]],
    check: (w) => {
      expect(at(w, 'h')).toBe('symlink->../victim');
      expect(at(w, 'victim/secret')).toBe(`file:${PWNED}`);
    },
  },

  // ---------------------------------------------------------------- device nodes named to overwrite
  {
    family: 'device node named to overwrite',
    needsRoot: true,
    what: 'char device ../victim/secret lands in dest/victim/secret',
    layers: () => [[charDevice('../victim/secret', 1, 3)]],
    check: (w) => expect(at(w, 'victim/secret')).toBe('char:1,3'),
  },
  {
    family: 'device node named to overwrite',
    needsRoot: true,
    what: 'char device over l -> ../victim/secret replaces the link',
    layers: () => [[symlink('l', '../victim/secret')], [charDevice('l', 1, 5)]],
    check: (w) => expect(at(w, 'l')).toBe('char:1,5'),
  },
  {
    family: 'device node named to overwrite',
    needsRoot: true,
    what: 'block device /victim/nested/deep lands in dest',
    layers: () => [[blockDevice('/victim/nested/deep', 7, 0)]],
    check: (w) => expect(at(w, 'victim/nested/deep')).toBe('block:7,0'),
  },
  {
    family: 'device node named to overwrite',
    needsRoot: true,
    what: 'FIFO ../victim/fifo lands in dest',
    layers: () => [[fifo('../victim/fifo')]],
    check: (w) => expect(at(w, 'victim/fifo')).toBe('fifo'),
  },
  {
    family: 'device node named to overwrite',
    needsRoot: true,
    what: 'char device l/notes.txt through l -> ../victim',
    layers: () => [[symlink('l', '../victim'), charDevice('l/notes.txt', 1, 3)]],
    check: (w) => expect(at(w, 'victim/notes.txt')).toBe('char:1,3'),
  },
  {
    family: 'device node named to overwrite',
    needsRoot: true,
    what: 'char device <absolute victim>/secret',
    layers: (w) => [[charDevice(`${w.victim}/secret`, 1, 3)]],
    check: (w) => expect(what(join(inRoot(w, w.victim), 'secret'))).toBe('char:1,3'),
  },

  // ---------------------------------------------------------------- long names, deep nesting
  {
    family: 'long names and deep nesting',
    what: 'a 5004-byte name is refused (default limit 4096)',
    layers: () => [[file('abcdefgh/'.repeat(556), PWNED)]],
    rejects: { message: /entry name is longer than 4096 bytes/, code: 'LAYER_NAME_TOO_LONG' },
    check: (w) => expect(tree(w.dest)).toEqual([]),
  },
  {
    family: 'long names and deep nesting',
    what: 'a 100-byte name with maxNameBytes 64 is refused',
    layers: () => [[file(`${'x'.repeat(50)}/${'y'.repeat(49)}`, PWNED)]],
    limits: { maxNameBytes: 64 },
    rejects: { message: /entry name is longer than 64 bytes/, code: 'LAYER_NAME_TOO_LONG' },
  },
  {
    family: 'long names and deep nesting',
    what: '1500 nested folders within the limit are made',
    layers: () => [[file(deepName(1500, 'leaf'), 'deep')]],
    check: (w) => expect(at(w, deepName(1500, 'leaf'))).toBe('file:deep'),
  },
  {
    family: 'long names and deep nesting',
    what: '2100 nested folders (4204 bytes) are refused',
    layers: () => [[file(deepName(2100, 'leaf'), 'deep')]],
    rejects: { message: /entry name is longer than 4096 bytes/, code: 'LAYER_NAME_TOO_LONG' },
  },
  {
    family: 'long names and deep nesting',
    what: 'a 300-byte path component is refused by the file system',
    layers: () => [[file('n'.repeat(300), PWNED)]],
    rejects: { message: /cannot apply layer/, code: 'LAYER_ENAMETOOLONG' },
  },
  {
    family: 'long names and deep nesting',
    what: 'a 5000-byte symlink target is refused by the file system',
    layers: () => [[symlink('l', '../'.repeat(1667))]],
    rejects: { message: /cannot apply layer/, code: 'LAYER_ENAMETOOLONG' },
  },

  // ---------------------------------------------------------------- entry-count limit
  {
    family: 'entry-count limit',
    what: '10 entries with maxEntries 5 are refused',
    layers: () => [Array.from({ length: 10 }, (_, i) => file(`f${i}`, 'x'))],
    limits: { maxEntries: 5 },
    rejects: { message: /more than 5 entries/, code: 'LAYER_TOO_MANY_ENTRIES' },
    check: (w) => expect(tree(w.dest)).toEqual(['f0', 'f1', 'f2', 'f3', 'f4']),
  },
  {
    family: 'entry-count limit',
    what: '5000 entries with maxEntries 10 are refused without reading them all',
    layers: () => [Array.from({ length: 5000 }, (_, i) => file(`f${i}`, 'x'))],
    limits: { maxEntries: 10 },
    rejects: { message: /more than 10 entries/, code: 'LAYER_TOO_MANY_ENTRIES' },
    check: (w) => expect(tree(w.dest)).toHaveLength(10),
  },
  {
    family: 'entry-count limit',
    what: '5000 entries from an async generator (a source with no destroy) are refused',
    layers: () => [viaGenerator(layerTar(Array.from({ length: 5000 }, (_, i) => file(`f${i}`, 'x'))))],
    limits: { maxEntries: 10 },
    rejects: { message: /more than 10 entries/, code: 'LAYER_TOO_MANY_ENTRIES' },
  },
  {
    family: 'entry-count limit',
    what: 'exactly maxEntries entries are accepted',
    layers: () => [[file('a', 'a'), dir('b/'), symlink('c', 'a')]],
    limits: { maxEntries: 3 },
    check: (w) => expect(tree(w.dest)).toEqual(['a', 'b', 'c']),
  },

  // ---------------------------------------------------------------- total-bytes limit
  {
    family: 'total-bytes limit',
    what: 'a 2048-byte file with maxTotalBytes 1024 is refused before it is written',
    layers: () => [[file('big', Buffer.alloc(2048, 1))]],
    limits: { maxTotalBytes: 1024 },
    rejects: { message: /layer content exceeds 1024 bytes/, code: 'LAYER_TOO_BIG' },
    check: (w) => expect(tree(w.dest)).toEqual([]),
  },
  {
    family: 'total-bytes limit',
    what: '8 files of 512 KiB with maxTotalBytes 1 MiB are refused (a bomb stand-in)',
    layers: () => [Array.from({ length: 8 }, (_, i) => file(`zeros${i}`, Buffer.alloc(512 * 1024)))],
    limits: { maxTotalBytes: 1024 * 1024 },
    rejects: { message: /layer content exceeds 1048576 bytes/, code: 'LAYER_TOO_BIG' },
    check: (w) => expect(tree(w.dest)).toEqual(['zeros0', 'zeros1']),
  },
  {
    family: 'total-bytes limit',
    what: 'a symlink entry carrying a 2 MiB body with maxTotalBytes 1 MiB is refused',
    layers: () => [rawTar([rawRecord({ name: 'l', typeflag: '2', linkname: 'target', mode: 0o777 }, Buffer.alloc(2 * 1024 * 1024))])],
    limits: { maxTotalBytes: 1024 * 1024 },
    rejects: { message: /layer content exceeds 1048576 bytes/, code: 'LAYER_TOO_BIG' },
    check: (w) => expect(tree(w.dest)).toEqual([]),
  },
  {
    family: 'total-bytes limit',
    what: 'content of exactly maxTotalBytes is accepted',
    layers: () => [[file('a', Buffer.alloc(512, 1)), file('b', Buffer.alloc(512, 2))]],
    limits: { maxTotalBytes: 1024 },
    check: (w) => expect(tree(w.dest)).toEqual(['a', 'b']),
  },

  // ---------------------------------------------------------------- invalid whiteout names
  {
    family: 'invalid whiteout name',
    what: '.wh..wh.x is refused',
    layers: () => [[whiteout('.wh..wh.x')]],
    rejects: { message: /invalid whiteout/, code: 'LAYER_BAD_WHITEOUT' },
  },
  {
    family: 'invalid whiteout name',
    what: 'd/.wh..wh.plnk (an aufs hardlink folder) is refused',
    layers: () => [[whiteout('d/.wh..wh.plnk')]],
    rejects: { message: /invalid whiteout/, code: 'LAYER_BAD_WHITEOUT' },
  },
  {
    family: 'invalid whiteout name',
    what: '.wh..wh..opq.x (not quite opaque) is refused',
    layers: () => [[file('keep', 'kept')], [whiteout('.wh..wh..opq.x')]],
    rejects: { message: /invalid whiteout/, code: 'LAYER_BAD_WHITEOUT' },
    check: (w) => expect(tree(w.dest)).toEqual(['keep']),
  },

  // ---------------------------------------------------------------- entry types tar-stream passes on but layers do not use
  {
    family: 'unsupported entry type',
    what: 'a GNU sparse file (typeflag S) is refused',
    layers: () => [rawTar([rawRecord({ name: '../victim/secret', typeflag: 'S' }, PWNED)])],
    rejects: { message: /unsupported type/, code: 'LAYER_BAD_HEADER' },
    // The parent folder is made (inside the root) before the type is looked at.
    check: (w) => expect(tree(w.dest)).toEqual(['victim']),
  },
  {
    family: 'unsupported entry type',
    what: 'a GNU volume label (typeflag V) is refused',
    layers: () => [rawTar([rawRecord({ name: 'label', typeflag: 'V' })])],
    rejects: { message: /unsupported type/, code: 'LAYER_BAD_HEADER' },
  },

  // ---------------------------------------------------------------- parent is a regular file
  {
    family: 'parent is a regular file',
    what: 'f then f/x in one layer is refused',
    layers: () => [[file('f', 'f'), file('f/x', PWNED)]],
    rejects: { message: /"f" is not a directory/, code: 'NOT_A_DIRECTORY' },
    check: (w) => expect(at(w, 'f')).toBe('file:f'),
  },
  {
    family: 'parent is a regular file',
    what: 'f below, f/x/y above is refused',
    layers: () => [[file('f', 'f')], [file('f/x/y', PWNED)]],
    rejects: { message: /"f" is not a directory/, code: 'NOT_A_DIRECTORY' },
  },
  {
    family: 'parent is a regular file',
    what: 's -> f (a file) then s/x is refused',
    layers: () => [[file('f', 'f'), symlink('s', 'f'), file('s/x', PWNED)]],
    rejects: { message: /"f" is not a directory/, code: 'NOT_A_DIRECTORY' },
  },
  {
    family: 'parent is a regular file',
    what: 'a hardlink to f/x where f is a file is refused',
    layers: () => [[file('f', 'f'), hardlink('h', 'f/x')]],
    rejects: { message: /does not exist in the image/, code: 'LAYER_BAD_LINK' },
  },
  {
    family: 'parent is a regular file',
    what: 's -> ../victim/secret (a file outside) then s/x is made inside the root',
    layers: () => [[symlink('s', '../victim/secret'), file('s/x', PWNED)]],
    check: (w) => expect(at(w, 'victim/secret/x')).toBe(`file:${PWNED}`),
  },
];

/** [name, case]: a plain string first, so that vitest prints the whole name. */
const NAMED = CASES.map((c) => [`${c.family}: ${c.what}`, c] as const);
const RUNNABLE = NAMED.filter(([, c]) => isRoot || !c.needsRoot);
const NEEDS_ROOT = NAMED.filter(([, c]) => !isRoot && c.needsRoot);

let world: World | undefined;
afterEach(() => {
  if (world) destroyWorld(world);
  world = undefined;
});

describe('hostile layers stay inside the root', () => {
  if (NEEDS_ROOT.length > 0) it.skip.each(NEEDS_ROOT)('%s (needs root)', () => undefined);
  it.each(RUNNABLE)('%s', async (_name, c) => {
    const w = createWorld();
    world = w;
    const layers = c.layers(w);
    const hostile = layers[layers.length - 1] as Layer;
    // The lower layers are benign and must apply cleanly.
    for (const lower of layers.slice(0, -1)) await apply(w.dest, lower);
    const outcome = await apply(w.dest, hostile, c.limits ? { limits: c.limits } : {}).then(
      (result) => ({ ok: true as const, result }),
      (error: unknown) => ({ ok: false as const, error }),
    );

    // Nothing outside the root was touched, read, added or removed.
    expect(outsideChanges(w)).toEqual([]);

    if (c.rejects) {
      expect(outcome.ok, 'the hostile layer should have been refused').toBe(false);
      const error = (outcome as { error: unknown }).error;
      expect(error).toBeInstanceOf(LayerError);
      expect((error as LayerError).message).toMatch(c.rejects.message);
      if (c.rejects.code) expect((error as LayerError).code).toBe(c.rejects.code);
    } else if (!outcome.ok) {
      throw outcome.error;
    }
    c.check?.(w);
    // The outside is still untouched after looking at the result.
    expect(outsideChanges(w)).toEqual([]);
  });
});

/**
 * The in-memory applier behind EROFS images (memtree.ts) must read every
 * hostile layer as the folder applier does: the same tree inside the root
 * (read back from the built image), or a refusal. There is no host path it
 * could reach, so what is checked is the meaning, not the outside.
 */
describe('the same layers built as an EROFS image give the same tree', () => {
  it.each(RUNNABLE)('%s', async (_name, c) => {
    const w = createWorld();
    world = w;
    const startNs = BigInt(Date.now() - 1000) * 1_000_000n;
    const layers = c.layers(w);
    for (const lower of layers.slice(0, -1)) await apply(w.dest, lower);
    const folder = await apply(w.dest, layers[layers.length - 1] as Layer, c.limits ? { limits: c.limits } : {}).then(
      () => undefined,
      (error: unknown) => error,
    );

    const again = c.layers(w);
    const imagePath = join(mkdtempSync(join(tmpdir(), 'cs-breakout-erofs-')), 'image');
    try {
      const image = await buildInMemory(again, imagePath, c.limits);
      if (folder !== undefined) {
        expect(image, `the folder build refused: ${String(folder)}`).toBeInstanceOf(LayerError);
        if (c.rejects?.code && (folder as LayerError).code === c.rejects.code) expect((image as LayerError).code).toBe(c.rejects.code);
        return;
      }
      if (image !== undefined) throw image;
      const expected = normalise(await snapshot(w.dest), startNs);
      const actual = normalise(new ErofsImage(imagePath).tree(), startNs);
      // Folders made as implicit parents have the time they were made on disk, and 0 in the image.
      const diffs = diffTrees(expected, actual, { ignore: (path, field, node) => field === 'mtime' && (path === '.' || (node.type === 'dir' && node.mtime === 'unpack-time')) });
      expect(diffs).toEqual([]);
    } finally {
      rmSync(dirname(imagePath), { recursive: true, force: true });
    }
  });
});

describe('the harness notices', () => {
  it('a read of a victim file (its atime moves on this relatime mount)', () => {
    const w = createWorld();
    world = w;
    expect(outsideChanges(w)).toEqual([]);
    readFileSync(join(w.victim, 'nested/deep'));
    expect(outsideChanges(w).join('\n')).toMatch(/victim\/nested\/deep: atimeNs changed/);
  });

  it('a listing of a victim folder', () => {
    const w = createWorld();
    world = w;
    readdirSync(join(w.victim, 'nested/inner'));
    expect(outsideChanges(w).join('\n')).toMatch(/victim\/nested\/inner: atimeNs changed/);
  });

  it('a readlink of a victim symlink', () => {
    const w = createWorld();
    world = w;
    readlinkSync(join(w.victim, 'link-to-secret'));
    expect(outsideChanges(w).join('\n')).toMatch(/victim\/link-to-secret: atimeNs changed/);
  });

  it('a hardlink made to a victim file', () => {
    const w = createWorld();
    world = w;
    linkSync(join(w.victim, 'secret'), join(w.dest, 'stolen'));
    expect(outsideChanges(w).join('\n')).toMatch(/victim\/secret: nlink changed from 1 to 2/);
  });

  it('times set back to their old values (ctime still moves)', () => {
    const w = createWorld();
    world = w;
    const info = lstatSync(w.evil);
    lutimesSync(w.evil, info.atime, info.mtime);
    expect(outsideChanges(w).join('\n')).toMatch(/dest-evil: ctimeNs changed/);
  });

  it('a new file beside dest and inside the victim', () => {
    const w = createWorld();
    world = w;
    writeFileSync(join(w.parent, 'dropped'), 'x');
    writeFileSync(join(w.victim, 'nested/dropped'), 'x');
    const changes = outsideChanges(w).join('\n');
    expect(changes).toMatch(/parent folder now holds dest, dest-evil, dropped, victim/);
    expect(changes).toMatch(/victim\/nested\/dropped appeared/);
  });
});

describe('the catalog', () => {
  it('covers every family with at least 40 cases', () => {
    const families = new Map<string, number>();
    for (const c of CASES) families.set(c.family, (families.get(c.family) ?? 0) + 1);
    expect(CASES.length).toBeGreaterThanOrEqual(40);
    expect([...families.keys()].sort()).toEqual(
      [
        '../ symlink',
        'absolute name',
        'absolute symlink',
        'device node named to overwrite',
        'directory replaces a symlink',
        'entry-count limit',
        'hardlink out of the root',
        'hardlink to a symlink pointing outside',
        'invalid whiteout name',
        'long names and deep nesting',
        'name with ../',
        'opaque marker in a symlinked folder',
        'parent is a regular file',
        'prefix confusion (dest-evil)',
        'symlink chain',
        'symlink replaces a directory',
        'symlink replaces a directory in one layer',
        'symlink to a FIFO or device outside',
        'total-bytes limit',
        'unsupported entry type',
        'whiteout of .. or the root',
        'whiteout through a symlink',
      ].sort(),
    );
  });
});
