/**
 * Looking at the result of applying layers, and applying stacks of them.
 * Everything here reads inside the root only.
 */
import { lstatSync, readdirSync, readFileSync, readlinkSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { applyLayer, type ApplyOptions, type ApplyResult } from '../../../src/layers/apply.js';
import { layerTar, type EntrySpec } from './tar.js';

export type Layer = readonly EntrySpec[] | AsyncIterable<Uint8Array>;

export function toTar(layer: Layer): AsyncIterable<Uint8Array> {
  return Array.isArray(layer) ? layerTar(layer as readonly EntrySpec[]) : (layer as AsyncIterable<Uint8Array>);
}

/** Apply one layer onto root. */
export function apply(root: string, layer: Layer, options: Omit<ApplyOptions, 'root' | 'tar'> = {}): Promise<ApplyResult> {
  return applyLayer({ root, tar: toTar(layer), ...options });
}

/** Apply layers in order; the options only go to the last one (the others must apply cleanly). */
export async function applyStack(root: string, layers: readonly Layer[], options: Omit<ApplyOptions, 'root' | 'tar'> = {}): Promise<ApplyResult> {
  const lower = layers.slice(0, -1);
  const last = layers[layers.length - 1];
  if (last === undefined) throw new Error('no layers');
  for (const layer of lower) await apply(root, layer);
  return apply(root, last, options);
}

export function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT' || (error as { code?: string }).code === 'ENOTDIR') return undefined;
    throw error;
  }
}

export type Kind = 'file' | 'dir' | 'symlink' | 'fifo' | 'char' | 'block' | 'missing';

export function kindOf(path: string): Kind {
  const info = lstatOrUndefined(path);
  if (!info) return 'missing';
  if (info.isSymbolicLink()) return 'symlink';
  if (info.isFile()) return 'file';
  if (info.isDirectory()) return 'dir';
  if (info.isFIFO()) return 'fifo';
  if (info.isCharacterDevice()) return 'char';
  if (info.isBlockDevice()) return 'block';
  throw new Error(`${path}: unexpected file type`);
}

/** A short description of what is at path: `file:CONTENT`, `symlink->TARGET`, `dir`, `fifo`, `char:MAJ,MIN`, `missing`. */
export function what(path: string): string {
  const kind = kindOf(path);
  switch (kind) {
    case 'file':
      return `file:${readFileSync(path, 'utf8')}`;
    case 'symlink':
      return `symlink->${readlinkSync(path)}`;
    case 'char':
    case 'block': {
      const { major, minor } = deviceNumbers(lstatSync(path).rdev);
      return `${kind}:${major},${minor}`;
    }
    default:
      return kind;
  }
}

export function modeOf(path: string): number {
  return lstatSync(path).mode & 0o7777;
}

/** Linux's encoding of dev_t (glibc gnu_dev_major/minor). */
export function deviceNumbers(rdev: number): { major: number; minor: number } {
  const dev = BigInt(rdev);
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  return { major, minor };
}

/** All paths below root (relative, sorted), for comparing whole trees. */
export function tree(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, prefix: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const rel = prefix === '' ? entry.name : `${prefix}/${entry.name}`;
      out.push(rel);
      if (entry.isDirectory()) walk(join(dir, entry.name), rel);
    }
  };
  walk(root, '');
  return out.sort();
}
