import type { SnapshotRef } from '../definition/index.js';
import { formatReference } from '../oci/reference.js';
import { InputError, UsageError } from '../util/errors.js';
import { assemble, type AssembleResult, type AssembleSnapshot, type OutputFormat, type SnapshotKind } from './assemble.js';

/**
 * Which snapshots to assemble, from `cs rootfs assemble`'s flags: either a
 * workspace of a definition (-f FILE -W SANDBOX/WORKSPACE) or explicit images.
 */

export interface AssembleFlags {
  file?: string | undefined;
  workspace?: string | undefined;
  base?: string | undefined;
  home?: string | undefined;
  personal?: string | undefined;
  format: string;
  out: string;
  force?: boolean | undefined;
  stack?: boolean | undefined;
  onPhase?: (phase: string) => void;
  /**
   * Resolves catalogue names (the snapshot room, which sits above this one,
   * passes it in); without it only images can be named.
   */
  resolve?: (what: SnapshotRef | string, kind: SnapshotKind) => Promise<AssembleSnapshot>;
  /** The user's private folder, for chains with a personal snapshot. */
  privateDir?: () => Promise<string>;
}

/** The image a snapshot reference stands for; catalogue names wait for the snapshots issue. */
export function imageOf(ref: SnapshotRef, field: string): string {
  if (ref.kind === 'oci') return formatReference(ref.reference);
  throw new InputError(
    `${field} "${ref.name}" names a snapshot from the catalogue, which cs cannot resolve yet; use oci://REF for an image`,
    { code: 'SNAPSHOT_UNSUPPORTED' },
  );
}

export async function assembleFromFlags(flags: AssembleFlags): Promise<AssembleResult> {
  const snapshots: AssembleSnapshot[] = [];
  const resolve = flags.resolve ?? (async (what: SnapshotRef | string, kind: SnapshotKind): Promise<AssembleSnapshot> => ({ reference: typeof what === 'string' ? what : imageOf(what, `${kind}_snapshot`), kind }));
  if (flags.file || flags.workspace) {
    if (!flags.file || !flags.workspace) throw new UsageError('-f FILE and -W SANDBOX/WORKSPACE go together');
    if (flags.base || flags.home) throw new UsageError('give either -f/-W or --base/--home, not both');
    // Loaded only here: the definition's parser and schema (yaml, ajv) are a good part of the start-up of a command that names images.
    const { loadSandbox } = await import('../definition/index.js');
    const sandbox = await loadSandbox({ file: flags.file });
    const parts = flags.workspace.split('/');
    if (parts.length > 2 || parts.some((p) => p === '')) throw new UsageError(`-W takes SANDBOX/WORKSPACE or WORKSPACE, not "${flags.workspace}"`);
    const [sandboxName, workspaceName] = parts.length === 2 ? parts : [sandbox.name, flags.workspace];
    if (sandboxName?.toLowerCase() !== sandbox.name) throw new InputError(`${flags.file} defines sandbox "${sandbox.name}", not "${sandboxName}"`);
    const workspace = sandbox.workspaces.find((w) => w.name === workspaceName?.toLowerCase());
    if (!workspace) throw new InputError(`sandbox "${sandbox.name}" has no workspace "${workspaceName}" (it has: ${sandbox.workspaces.map((w) => w.name).join(', ')})`);
    if (!workspace.baseSnapshot) throw new InputError(`workspace ${sandbox.name}/${workspace.name} has no base_snapshot`);
    snapshots.push(await resolve(workspace.baseSnapshot, 'base'));
    if (workspace.homeSnapshot) snapshots.push(await resolve(workspace.homeSnapshot, 'home'));
    if (flags.personal) snapshots.push(await resolve(flags.personal, 'personal'));
  } else {
    if (!flags.base) throw new UsageError('give -f FILE -W SANDBOX/WORKSPACE, or --base IMAGE');
    snapshots.push(await resolve(flags.base, 'base'));
    if (flags.home) snapshots.push(await resolve(flags.home, 'home'));
    if (flags.personal) snapshots.push(await resolve(flags.personal, 'personal'));
  }
  const privateDir = snapshots.some((s) => s.store) && flags.privateDir ? await flags.privateDir() : undefined;
  return assemble({
    ...(privateDir ? { privateDir } : {}),
    snapshots,
    out: flags.out,
    format: flags.format as OutputFormat,
    ...(flags.force ? { force: true } : {}),
    ...(flags.stack ? { stack: true } : {}),
    ...(flags.onPhase ? { onPhase: flags.onPhase } : {}),
  });
}
