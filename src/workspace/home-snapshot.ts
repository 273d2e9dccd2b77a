import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WORKSPACE_HOME } from '../definition/model.js';
import { applyLayer } from '../layers/apply.js';
import { checkMissing, excludeMatcher, parseSelection, type Selection } from '../snapshot/includes.js';
import { InputError, VmError } from '../util/errors.js';
import type { AgentClient } from '../vm/agent-client.js';
import { AgentError } from '../vm/agent-client.js';
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

const MAX_LIST_BYTES = 1024 * 1024;

async function readGuestText(client: AgentClient, path: string): Promise<string | undefined> {
  try {
    const bytes = await client.readFile(path);
    if (bytes.length > MAX_LIST_BYTES) throw new InputError(`${path}: larger than 1 MiB`);
    return bytes.toString('utf8');
  } catch (error) {
    if (error instanceof AgentError && error.errnoCode === 'ENOENT') return undefined;
    throw error;
  }
}

/** Runs a busybox shell script as root in the guest; stdout as text, or a VmError with its stderr. */
async function guestScript(client: AgentClient, script: string, args: readonly string[], input?: Buffer): Promise<Buffer> {
  const result = await client.run({ argv: [GUEST_BUSYBOX, 'sh', '-c', script, 'sh', ...args], cwd: WORKSPACE_HOME, timeoutMs: 10 * 60_000, ...(input ? { input } : {}) });
  if (result.code !== 0) throw new VmError(`reading the workspace's home failed: ${result.stderr.toString('utf8').trim() || `exit ${result.code}`}`);
  return result.stdout;
}

export async function stageWorkspaceHome(client: AgentClient, kind: 'home' | 'personal', label: string): Promise<StagedHome> {
  const folder = kind === 'home' ? '.snapshot' : '.snapshot.personal';
  const guestFolder = `${WORKSPACE_HOME}/${folder}`;
  const texts = {
    includes: await readGuestText(client, `${guestFolder}/includes.txt`),
    excludes: await readGuestText(client, `${guestFolder}/excludes.txt`),
    includesFile: `${label}:${guestFolder}/includes.txt`,
    excludesFile: `${label}:${guestFolder}/excludes.txt`,
  };
  const selection = parseSelection(texts);

  // Which included paths are missing, then every path under the included ones (NUL-separated).
  const BB = GUEST_BUSYBOX;
  const missing = (await guestScript(client, `for p in "$@"; do [ -e "$p" ] || [ -L "$p" ] || printf '%s\\0' "$p"; done`, selection.includes)).toString('utf8');
  checkMissing(missing.split('\0').filter((p) => p !== ''), `${label}:${WORKSPACE_HOME}`);
  const listed = (await guestScript(client, `${BB} find "$@" -print0`, selection.includes)).toString('utf8').split('\0').filter((p) => p !== '');

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
  for (const path of selection.includes) {
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) chosen.add(parts.slice(0, i).join('/'));
  }

  const dir = await mkdtemp(join(tmpdir(), 'cs-home-'));
  const cleanup = (): Promise<void> => rm(dir, { recursive: true, force: true });
  try {
    if (chosen.size > 0) {
      // xargs may run tar more than once for a long list: the archives follow each other, and the reader skips the zero blocks between them.
      const handle = client.exec({ argv: [BB, 'sh', '-c', `${BB} xargs -0 ${BB} tar -c -f - --no-recursion --numeric-owner --`], cwd: WORKSPACE_HOME, stdin: true, timeoutMs: 30 * 60_000 });
      let err = '';
      handle.stderr.on('data', (chunk: Buffer) => (err += chunk.toString('utf8')));
      handle.stdin?.on('error', () => undefined);
      handle.stdin?.end(Buffer.from([...chosen].sort().map((p) => `${p}\0`).join('')));
      await applyLayer({ root: dir, tar: handle.stdout, privileged: false });
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
