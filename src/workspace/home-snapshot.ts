import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WORKSPACE_HOME, WORKSPACE_USER } from '../definition/model.js';
import { applyLayer } from '../layers/apply.js';
import { checkMissing, excludeMatcher, leadingFolders, MAX_LIST_BYTES, parseSelection, type Selection } from '../snapshot/includes.js';
import { InputError, VmError } from '../util/errors.js';
import type { AgentClient } from '../vm/agent-client.js';
import { GUEST_BUSYBOX } from './guest-env.js';

/**
 * A home or personal snapshot of a running workspace's home folder: the
 * lists are read from the guest (`/home/owner/.snapshot/` or
 * `.snapshot.personal/`), checked here, the files they select are listed in
 * the guest (`find`), filtered here with cs's own exclusion rules, and only
 * the selected ones cross to the host as a tar stream, which is treated as
 * hostile: it is applied with the safe layer applier into a private
 * temporary folder. The snapshot is then made from that folder exactly as
 * from a home folder on the host.
 */

export interface StagedHome {
  /** A private folder laid out like the home, holding the selected files. */
  dir: string;
  selection: Selection;
  cleanup: () => Promise<void>;
}


/**
 * A list file from the guest, read as the owner (the agent's own file read
 * runs as root and follows links), refusing a symlink and anything over
 * 1 MiB without reading it all.
 */
async function readGuestText(client: AgentClient, path: string): Promise<string | undefined> {
  const script = `[ -e "$1" ] || [ -L "$1" ] || exit 3; [ -L "$1" ] && exit 4; [ -f "$1" ] || exit 5; ${GUEST_BUSYBOX} head -c ${MAX_LIST_BYTES + 1} -- "$1"`;
  const result = await client.run({ argv: [GUEST_BUSYBOX, 'sh', '-c', script, 'sh', path], cwd: WORKSPACE_HOME, user: WORKSPACE_USER, timeoutMs: 60_000 });
  if (result.code === 3) return undefined;
  if (result.code === 4 || result.code === 5) throw new InputError(`${path} is not a regular file`);
  if (result.code !== 0) throw new VmError(`cannot read ${path}: ${result.stderr.toString('utf8').trim() || `exit ${result.code}`}`);
  if (result.stdout.length > MAX_LIST_BYTES) throw new InputError(`${path}: larger than 1 MiB`);
  return result.stdout.toString('utf8');
}

function nulList(bytes: Buffer): string[] {
  return bytes.toString('utf8').split('\0').filter((p) => p !== '');
}

/**
 * Runs a busybox shell script in the guest as the owner (what the owner
 * cannot read does not go into their snapshot); stdout, or a VmError with
 * its stderr.
 */
async function guestScript(client: AgentClient, script: string, args: readonly string[]): Promise<Buffer> {
  const result = await client.run({ argv: [GUEST_BUSYBOX, 'sh', '-c', script, 'sh', ...args], cwd: WORKSPACE_HOME, user: WORKSPACE_USER, timeoutMs: 10 * 60_000 });
  if (result.code !== 0) throw new VmError(`reading the workspace's home failed: ${result.stderr.toString('utf8').trim() || `exit ${result.code}`}`);
  return result.stdout;
}

export async function stageWorkspaceHome(client: AgentClient, kind: 'home' | 'personal', label: string, diskBytes: number): Promise<StagedHome> {
  const folder = kind === 'home' ? '.snapshot' : '.snapshot.personal';
  const guestFolder = `${WORKSPACE_HOME}/${folder}`;
  const texts = {
    includes: await readGuestText(client, `${guestFolder}/includes.txt`),
    excludes: await readGuestText(client, `${guestFolder}/excludes.txt`),
    includesFile: `${label}:${guestFolder}/includes.txt`,
    excludesFile: `${label}:${guestFolder}/excludes.txt`,
  };
  const selection = parseSelection(texts);

  // Included paths that go through a symlinked folder, those missing, then every path under the included ones
  // (NUL-separated; "./" in front so that no name is read as an option).
  const BB = GUEST_BUSYBOX;
  const folders = [...new Set(selection.includes.flatMap(leadingFolders))];
  const links = new Set(nulList(await guestScript(client, `for p in "$@"; do [ -L "./$p" ] && printf '%s\\0' "$p"; done; true`, folders)));
  const throughLinks = selection.includes.flatMap((path) => {
    const link = leadingFolders(path).find((f) => links.has(f));
    return link === undefined ? [] : [{ path, link }];
  });
  const direct = selection.includes.filter((p) => !throughLinks.some((t) => t.path === p));
  const missing = nulList(await guestScript(client, `for p in "$@"; do [ -e "./$p" ] || [ -L "./$p" ] || printf '%s\\0' "$p"; done`, direct));
  checkMissing(missing, `${label}:${WORKSPACE_HOME}`, throughLinks);
  const listed = nulList(await guestScript(client, `for p in "$@"; do ${BB} find "./$p" -print0; done`, selection.includes)).map((p) => p.replace(/^\.\//, ''));

  // The same rules as on the host: excluded paths and everything under them go; the folders leading to an included path come along.
  const excluded = excludeMatcher(selection.excludes);
  const chosen = new Set<string>();
  const dropped: string[] = [];
  for (const path of listed.sort()) {
    if (dropped.some((d) => path.startsWith(`${d}/`))) continue;
    if (excluded(path)) {
      dropped.push(path);
      continue;
    }
    chosen.add(path);
  }
  for (const folder of folders) chosen.add(folder);

  // The guest's tar lands one level down: a `./` entry sets the mode of the folder it is applied to,
  // and the outer folder (mkdtemp: 0700) must stay closed to other users.
  const outer = await mkdtemp(join(tmpdir(), 'cs-home-'));
  const dir = join(outer, 'home');
  const cleanup = (): Promise<void> => rm(outer, { recursive: true, force: true });
  try {
    await mkdir(dir, { mode: 0o700 });
    if (chosen.size > 0) {
      // xargs may run tar more than once for a long list: the archives follow each other, and the reader skips the zero blocks between them.
      const handle = client.exec({ argv: [BB, 'sh', '-c', `${BB} xargs -0 ${BB} tar -c -f - --no-recursion --numeric-owner --`], cwd: WORKSPACE_HOME, user: WORKSPACE_USER, stdin: true, timeoutMs: 30 * 60_000 });
      let err = '';
      handle.stderr.on('data', (chunk: Buffer) => (err += chunk.toString('utf8')));
      handle.stdin?.on('error', () => undefined);
      handle.stdin?.end(Buffer.from([...chosen].sort().map((p) => `./${p}\0`).join('')));
      // Nothing the guest sends may write more than its own disk holds (sparse files included).
      await applyLayer({ root: dir, tar: handle.stdout, privileged: false, limits: { maxTotalBytes: diskBytes } });
      const status = await handle.exit;
      if (status.code !== 0) throw new VmError(`copying the selected files out of ${label} failed: ${err.trim() || `exit ${status.code}`}`);
    }
    // Nothing is written into `dir` after the guest's files landed there: they may hold symlinks pointing anywhere.
    return { dir, selection, cleanup };
  } catch (error) {
    await cleanup();
    throw error;
  }
}
