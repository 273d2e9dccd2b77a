import { posix } from 'node:path';
import { WORKSPACE_HOME, WORKSPACE_USER } from '../definition/model.js';
import { CsError, InputError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import type { AgentClient } from '../vm/agent-client.js';
import { withCommandLease } from './busy.js';
import { openAgent } from './control.js';
import { GUEST_BUSYBOX } from './guest-env.js';
import { ensureRunning } from './lifecycle.js';
import type { WorkspaceRef } from './state.js';

/**
 * Files of a workspace for the service (list, read, write), confined to the
 * owner's home: a path is taken relative to it (or absolute inside it), a
 * `..` that climbs out is refused, and the guest's own resolution of the
 * path (symbolic links followed) must land inside it too, so a link in the
 * home cannot lead a read or a write to /etc. Reading, listing and writing
 * run as the workspace's user, so even a link or a hard link made inside
 * the guest after the check reaches only what that user may reach. Reads
 * are bounded: no more than the limit (and one byte) ever leaves the guest.
 */

export class FileTooLargeError extends CsError {
  constructor(message: string) {
    super(message, { code: 'TOO_LARGE', exitCode: 3 });
  }
}

export interface FileEntry {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: string;
  mtime: string;
}

/** A request's path as a path in the guest, inside the owner's home; throws for one that leaves it. */
export function homePath(path: string): string {
  if (path.includes('\0')) throw new InputError('a path cannot contain a NUL byte', { code: 'BAD_PATH' });
  const joined = posix.normalize(path.startsWith('/') ? path : `${WORKSPACE_HOME}/${path}`);
  const clean = joined.length > 1 ? joined.replace(/\/+$/, '') : joined;
  if (clean !== WORKSPACE_HOME && !clean.startsWith(`${WORKSPACE_HOME}/`)) {
    throw new InputError(`path "${path}" is outside the workspace's home (${WORKSPACE_HOME})`, { code: 'BAD_PATH' });
  }
  return clean;
}

/** The environment of file operations (run as the owner, not root: see steps.ts ROOT_ENV for root's). */
const FILE_OPS_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

async function sh(client: AgentClient, script: string, args: string[], options: { input?: Buffer; user?: string } = {}): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  const result = await client.run({ argv: [GUEST_BUSYBOX, 'sh', '-c', script, 'sh', ...args], env: FILE_OPS_ENV, user: options.user ?? WORKSPACE_USER, ...(options.input ? { input: options.input } : {}) });
  return { code: result.code, stdout: result.stdout, stderr: result.stderr.toString('utf8').trim() };
}

/** The guest's resolution of `path` (links followed; the last part may be missing), checked to stay in the home. */
async function resolveInHome(client: AgentClient, path: string): Promise<string> {
  const { code, stdout } = await sh(client, `${GUEST_BUSYBOX} readlink -f -- "$1" || exit 3`, [path], { user: 'root' });
  const real = stdout.toString('utf8').trim();
  if (code !== 0 || real === '') throw new InputError(`no such path: ${path}`, { code: 'NOT_FOUND' });
  if (real !== WORKSPACE_HOME && !real.startsWith(`${WORKSPACE_HOME}/`)) {
    throw new InputError(`path "${path}" leads outside the workspace's home (to ${real})`, { code: 'BAD_PATH' });
  }
  return real;
}

/** Runs `fn` with the workspace's agent, the workspace started if it was stopped, as a command that holds it. */
export async function withWorkspaceAgent<T>(ws: WorkspaceRef, label: string, fn: (client: AgentClient) => Promise<T>, env?: Env): Promise<T> {
  return withCommandLease(ws.dir, `files of ${label}`, async () => {
    await ensureRunning(ws, { label, ...(env ? { env } : {}) });
    const client = await openAgent(ws.dir, label);
    try {
      return await fn(client);
    } finally {
      client.close();
    }
  });
}

export async function listFiles(client: AgentClient, path: string): Promise<{ path: string; entries: FileEntry[] }> {
  const dir = await resolveInHome(client, homePath(path));
  // One record per entry, NUL-terminated: size:mode(hex):mtime:name (names may hold anything but NUL and /).
  const script = `cd -- "$1" || exit 3
for f in * .[!.]* ..?*; do
  [ -e "$f" ] || [ -L "$f" ] || continue
  ${GUEST_BUSYBOX} stat -c '%s:%f:%Y' -- "$f" | ${GUEST_BUSYBOX} tr -d '\\n'
  printf ':%s\\0' "$f"
done`;
  const { code, stdout, stderr } = await sh(client, script, [dir]);
  if (code === 3) throw new InputError(`${path} is not a folder`, { code: 'NOT_A_FOLDER' });
  if (code !== 0) throw new InputError(`cannot list ${path}: ${stderr}`);
  const entries: FileEntry[] = [];
  for (const record of stdout.toString('utf8').split('\0')) {
    const m = /^(\d+):([0-9a-f]+):(\d+):(.*)$/s.exec(record);
    if (!m) continue;
    const mode = parseInt(m[2] as string, 16);
    const kind = mode & 0o170000;
    entries.push({
      name: m[4] as string,
      type: kind === 0o100000 ? 'file' : kind === 0o040000 ? 'dir' : kind === 0o120000 ? 'symlink' : 'other',
      size: Number(m[1]),
      mode: (mode & 0o7777).toString(8).padStart(4, '0'),
      mtime: new Date(Number(m[3]) * 1000).toISOString(),
    });
  }
  entries.sort((a, b) => a.name.localeCompare(b.name));
  return { path: dir, entries };
}

export async function readWorkspaceFile(client: AgentClient, path: string, maxBytes: number): Promise<{ path: string; bytes: Buffer }> {
  const real = await resolveInHome(client, homePath(path));
  // As the user, and never more than the limit and one byte: a file that grows meanwhile cannot flood the host.
  const { code, stdout, stderr } = await sh(client, `[ -f "$1" ] || exit 3; ${GUEST_BUSYBOX} head -c "$2" -- "$1"`, [real, String(maxBytes + 1)]);
  if (code === 3) throw new InputError(`${path} is not a regular file`, { code: 'NOT_A_FILE' });
  if (code !== 0) throw new InputError(`cannot read ${path}: ${stderr}`);
  if (stdout.length > maxBytes) throw new FileTooLargeError(`${path} is over ${maxBytes} bytes, the most served per file`);
  return { path: real, bytes: stdout };
}

/** Writes a file as the user (parents made as needed); the parent must resolve inside the home. */
export async function writeWorkspaceFile(client: AgentClient, path: string, data: Uint8Array, options: { mode?: number } = {}): Promise<{ path: string; bytes: number }> {
  const target = homePath(path);
  if (target === WORKSPACE_HOME) throw new InputError('give a file path inside the home, not the home itself', { code: 'BAD_PATH' });
  const parent = posix.dirname(target);
  const made = await sh(client, `${GUEST_BUSYBOX} mkdir -p -- "$1"`, [parent]);
  if (made.code !== 0) throw new InputError(`cannot make ${parent}: ${made.stderr}`);
  const realParent = await resolveInHome(client, parent);
  const name = posix.basename(target);
  const mode = (options.mode ?? 0o644).toString(8);
  // Written beside, then renamed over: readers never see half a file, and a rename replaces a name, it follows no link.
  const script = `[ -L "$1/$2" ] && exit 3
[ -d "$1/$2" ] && exit 4
t="$1/.cs-write-$$"
${GUEST_BUSYBOX} cat > "$t" && ${GUEST_BUSYBOX} chmod "$3" "$t" && ${GUEST_BUSYBOX} mv -f "$t" "$1/$2" || { ${GUEST_BUSYBOX} rm -f "$t"; exit 5; }`;
  const { code, stderr } = await sh(client, script, [realParent, name, mode], { input: Buffer.from(data) });
  if (code === 3) throw new InputError(`${path} is a symbolic link; cs does not write through links`, { code: 'BAD_PATH' });
  if (code === 4) throw new InputError(`${path} is a folder`, { code: 'BAD_PATH' });
  if (code !== 0) throw new InputError(`cannot write ${path}: ${stderr}`);
  return { path: `${realParent}/${name}`, bytes: data.length };
}
