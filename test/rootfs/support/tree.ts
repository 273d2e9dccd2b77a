/**
 * Reading an assembled root filesystem back, whatever its format, as
 * comparable data: every path below the root with its type, permission bits
 * (setuid, setgid and sticky included), owner, content hash and symlink
 * target. A tar is extracted with `tar -xpf`, an erofs image with
 * `fsck.erofs --extract`, an ext4 image with debugfs's `rdump` — each the
 * tool a user would reach for.
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

export interface Node {
  type: 'dir' | 'file' | 'symlink' | 'fifo' | 'other';
  perm: string;
  uid: number;
  gid: number;
  sha256?: string;
  target?: string;
}

export type Tree = Map<string, Node>;

function typeOf(mode: number): Node['type'] {
  switch (mode & 0o170000) {
    case 0o040000:
      return 'dir';
    case 0o100000:
      return 'file';
    case 0o120000:
      return 'symlink';
    case 0o010000:
      return 'fifo';
    default:
      return 'other';
  }
}

/** Every path below `root` (not `root` itself), relative, `/`-separated. */
export function readTree(root: string, options: { skip?: (path: string) => boolean } = {}): Tree {
  const tree: Tree = new Map();
  const walk = (rel: string): void => {
    for (const name of readdirSync(rel === '' ? root : join(root, rel)).sort()) {
      const path = rel === '' ? name : `${rel}/${name}`;
      if (options.skip?.(path)) continue;
      const full = join(root, path);
      const info = lstatSync(full);
      const node: Node = { type: typeOf(info.mode), perm: (info.mode & 0o7777).toString(8).padStart(4, '0'), uid: info.uid, gid: info.gid };
      if (node.type === 'file') node.sha256 = createHash('sha256').update(readFileSync(full)).digest('hex');
      if (node.type === 'symlink') node.target = readlinkSync(full);
      tree.set(path, node);
      if (node.type === 'dir') walk(path);
    }
  };
  walk('');
  return tree;
}

/** A tree as sorted lines, for a diff a failing test prints whole. */
export function treeLines(tree: Tree): string[] {
  return [...tree.entries()].map(([path, n]) => `${path} ${n.type} ${n.perm} ${n.uid}:${n.gid}${n.sha256 ? ` ${n.sha256.slice(0, 12)}` : ''}${n.target !== undefined ? ` -> ${n.target}` : ''}`).sort();
}

export async function extractTar(image: string, dest: string): Promise<string> {
  await mkdir(dest, { recursive: true });
  await execa('tar', ['-xpf', image, '-C', dest, '--numeric-owner', '--same-owner']);
  return dest;
}

/** The value of one xattr of `path` (not following a final symlink), or undefined. */
export async function getXattr(path: string, name: string): Promise<string | undefined> {
  const result = await execa('getfattr', ['-h', '--only-values', '-n', name, '--', path], { reject: false, encoding: 'utf8' });
  return result.exitCode === 0 ? String(result.stdout) : undefined;
}

export async function debugfsCat(image: string, path: string): Promise<string> {
  return String((await execa('debugfs', ['-R', `cat ${path}`, image])).stdout);
}

/**
 * An erofs image as a Tree. fsck.erofs 1.5 chowns after setting the mode
 * when it extracts as root, and chown clears setuid/setgid, so the modes are
 * read from a second extraction that does not chown.
 */
export async function erofsTree(image: string, dest: string): Promise<Tree> {
  await execa('fsck.erofs', [`--extract=${dest}`, '--preserve', image]);
  await execa('fsck.erofs', [`--extract=${dest}.perms`, '--preserve-perms', '--no-preserve-owner', image]);
  const tree = readTree(dest);
  const perms = readTree(`${dest}.perms`);
  for (const [path, node] of tree) node.perm = perms.get(path)?.perm ?? 'missing';
  return tree;
}

/**
 * An ext4 image as a Tree: debugfs's rdump for the files (its `/lost+found`,
 * which mke2fs makes, left out), and debugfs's `stat` for modes and owners,
 * since rdump drops setuid, setgid and sticky bits.
 */
export async function ext4Tree(image: string, dest: string): Promise<Tree> {
  await mkdir(dest, { recursive: true });
  const dump = await execa('debugfs', ['-R', `rdump / ${dest}`, image]);
  const problems = dump.stderr.split('\n').filter((line) => line.trim() !== '' && !/^debugfs \d/.test(line));
  if (problems.length > 0) throw new Error(`debugfs rdump: ${problems.join('\n')}`);
  const tree = readTree(dest, { skip: (path) => path === 'lost+found' });
  const paths = [...tree.keys()];
  const commands = `${dest}.cmds`;
  await writeFile(commands, paths.map((path) => `stat "/${path}"\n`).join(''));
  const { stdout } = await execa('debugfs', ['-f', commands, image]);
  const stats = stdout.split(/^debugfs: /m).slice(1);
  if (stats.length !== paths.length) throw new Error(`debugfs stat: ${stats.length} answers for ${paths.length} paths`);
  stats.forEach((answer, i) => {
    const node = tree.get(paths[i] as string) as Node;
    const mode = /Mode:\s+(\d+)/.exec(answer);
    const owner = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(answer);
    if (!mode || !owner) throw new Error(`debugfs stat /${paths[i]}: ${answer}`);
    node.perm = (mode[1] as string).padStart(4, '0').slice(-4);
    node.uid = Number(owner[1]);
    node.gid = Number(owner[2]);
  });
  return tree;
}

/** One xattr of a file in an ext4 image, as debugfs reads it. */
export async function debugfsXattr(image: string, path: string, name: string): Promise<string | undefined> {
  const result = await execa('debugfs', ['-R', `ea_get "${path}" ${name}`, image], { reject: false });
  const value = /=\s*"(.*)"/.exec(String(result.stdout));
  return value?.[1];
}
