/**
 * A root filesystem as comparable data: for every path below the root (and
 * the root itself, as "."), its type, permission bits (with setuid, setgid,
 * sticky), owner, mtime in nanoseconds, content hash, symlink target, device
 * numbers, the set of paths sharing its inode, and its user.* xattrs.
 * `diffTrees` lists every difference between two such snapshots, as lines a
 * failing test can print whole.
 */
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';

export interface Node {
  type: 'dir' | 'file' | 'symlink' | 'fifo' | 'char' | 'block' | 'socket';
  perm: string;
  uid: number;
  gid: number;
  /** Nanoseconds since the epoch. */
  mtime: string;
  sha256?: string;
  target?: string;
  device?: string;
  /** Other paths with the same inode (non-directories with more than one link). */
  links?: string;
  xattrs?: Record<string, string>;
}

export type Tree = Map<string, Node>;

function typeOf(mode: number): Node['type'] {
  switch (mode & 0o170000) {
    case 0o040000:
      return 'dir';
    case 0o120000:
      return 'symlink';
    case 0o010000:
      return 'fifo';
    case 0o020000:
      return 'char';
    case 0o060000:
      return 'block';
    case 0o140000:
      return 'socket';
    default:
      return 'file';
  }
}

/** Linux's encoding of dev_t (glibc's gnu_dev_major/minor). */
export function major(rdev: bigint): bigint {
  return ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
}
export function minor(rdev: bigint): bigint {
  return (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
}

/**
 * xattrs are read and written with python3's os.*xattr (Node has no xattr
 * API, and Debian's `attr` tools are not installed by scripts/setup.sh);
 * without python3 they are not compared. The system python is preferred: a
 * version manager's shim on PATH can take a second to start.
 */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
let pythonChecked: Promise<boolean> | undefined;
export function canReadXattrs(): Promise<boolean> {
  pythonChecked ??= python('import os; os.listxattr', []).then(
    () => true,
    () => false,
  );
  return pythonChecked;
}

async function python(script: string, args: string[], input?: string): Promise<string> {
  const { stdout } = await execa(PYTHON, ['-I', '-S', '-c', script, ...args], input === undefined ? { stdin: 'ignore' } : { input });
  return stdout;
}

const XATTR_SCRIPT = `
import json, os, sys
root = sys.argv[1]
out = {}
for rel in json.load(sys.stdin):
    p = os.path.join(root, rel) if rel != '.' else root
    found = {}
    for name in sorted(os.listxattr(p, follow_symlinks=False)):
        if name.startswith('user.'):
            found[name] = os.getxattr(p, name, follow_symlinks=False).decode('utf-8', 'surrogateescape')
    if found:
        out[rel] = found
json.dump(out, sys.stdout)
`;

export async function snapshot(root: string): Promise<Tree> {
  const tree: Tree = new Map();
  const inodes = new Map<bigint, string[]>();
  const visit = (rel: string): void => {
    const abs = rel === '.' ? root : join(root, rel);
    const info = lstatSync(abs, { bigint: true });
    const type = typeOf(Number(info.mode));
    const node: Node = {
      type,
      perm: (Number(info.mode) & 0o7777).toString(8).padStart(4, '0'),
      uid: Number(info.uid),
      gid: Number(info.gid),
      mtime: info.mtimeNs.toString(),
    };
    if (type === 'file') node.sha256 = createHash('sha256').update(readFileSync(abs)).digest('hex');
    if (type !== 'dir' && info.nlink > 1n) inodes.set(info.ino, [...(inodes.get(info.ino) ?? []), rel]);
    if (type === 'symlink') node.target = readlinkSync(abs);
    if (type === 'char' || type === 'block') node.device = `${major(info.rdev)}:${minor(info.rdev)}`;
    tree.set(rel, node);
    if (type === 'dir') {
      for (const name of readdirSync(abs).sort()) visit(rel === '.' ? name : `${rel}/${name}`);
    }
  };
  visit('.');
  for (const paths of inodes.values()) {
    for (const path of paths) {
      const others = paths.filter((p) => p !== path);
      if (others.length > 0) (tree.get(path) as Node).links = others.sort().join(',');
    }
  }
  if (await canReadXattrs()) {
    const stdout = await python(XATTR_SCRIPT, [root], JSON.stringify([...tree.keys()]));
    for (const [rel, xattrs] of Object.entries(JSON.parse(stdout) as Record<string, Record<string, string>>)) {
      (tree.get(rel) as Node).xattrs = xattrs;
    }
  }
  return tree;
}

export type Field = keyof Node;

export interface DiffOptions {
  /** Fields not compared for a path (with the reason documented by the caller). */
  ignore?: (path: string, field: Field, node: Node) => boolean;
}

/** Every difference, as `path: field expected(umoci)=... actual(cs)=...` lines. */
export function diffTrees(expected: Tree, actual: Tree, options: DiffOptions = {}): string[] {
  const out: string[] = [];
  const paths = [...new Set([...expected.keys(), ...actual.keys()])].sort();
  for (const path of paths) {
    const e = expected.get(path);
    const a = actual.get(path);
    if (!e || !a) {
      out.push(`${path}: ${e ? `only in umoci (${e.type})` : `only in cs (${a?.type})`}`);
      continue;
    }
    const fields = new Set([...Object.keys(e), ...Object.keys(a)] as Field[]);
    for (const field of fields) {
      if (options.ignore?.(path, field, e)) continue;
      const ev = JSON.stringify(e[field]);
      const av = JSON.stringify(a[field]);
      if (ev !== av) out.push(`${path}: ${field} umoci=${ev} cs=${av}`);
    }
  }
  return out;
}
