import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DefinitionError } from '../definition/issues.js';
import { parseDefinition } from '../definition/load.js';
import type { Sandbox } from '../definition/model.js';
import { isResourceName, RESOURCE_NAME_RULE } from '../definition/names.js';
import { loadConfig } from '../oci/config.js';
import { currentUser } from '../snapshot/catalogue.js';
import { InputError, UsageError } from '../util/errors.js';
import { withLock } from '../util/lock.js';
import { run } from '../util/process.js';
import { activeCommands, describeCommands } from './busy.js';
import { freezeTop, linkChain, overlayOn, prepareDisk, sealed } from './disk.js';
import {
  discardFolder,
  killOrphanQemu,
  portsInUse,
  pruneUnusedRootImages,
  removeSandbox,
  resolveWorkspace,
  retireWorkspace,
  startWorkspace,
  summarize,
  type LifecycleOptions,
  type WorkspaceSummary,
} from './lifecycle.js';
import { allocatePorts } from './ports.js';
import { claimRootImages } from './root-images.js';
import { displayName, FILES, listWorkspaces, readRecord, readRun, sandboxesDir, supervisorAlive, writeRecord, type WorkspaceRecord, type WorkspaceRef } from './state.js';
import { checkQuota, OVERLAY_BYTES, usageReport } from './usage.js';

/**
 * Workspaces without a definition (`cs workspace …`), in the spirit of
 * persistent sandboxes: a named disk that outlives every session, made
 * from an image or a snapshot, a clone of another workspace, or a git
 * repository. One model with definitions: such a workspace is a sandbox
 * of the same name holding one workspace of that name, so `-W NAME` and
 * every sandbox command work on it, and the `cs workspace` commands work on
 * definition workspaces (`SANDBOX/WORKSPACE`) too.
 */

export interface StandaloneOptions extends LifecycleOptions {
  name: string;
  /** oci://REF or a bare image reference. */
  image?: string;
  /** A base snapshot from the catalogue. */
  snapshot?: string;
  template?: boolean;
  label?: string;
  diskBytes?: number;
  cpus?: number;
  memoryMiB?: number;
  /** Boot it now (default: it boots on first use, e.g. `cs exec`). */
  start?: boolean;
  personal?: string;
  /** Whose it is (an API key's owner, for `cs serve`); default the local user. */
  owner?: string;
  /** Made for one command by `cs serve` (swept when the service starts). */
  ephemeral?: boolean;
}

export interface WorkspaceInfo extends WorkspaceSummary {
  /** What people call it: NAME, or SANDBOX/WORKSPACE for a definition's. */
  id: string;
  standalone: boolean;
  template: boolean;
  label?: string;
  origin?: WorkspaceRecord['origin'];
  restorePoints: number;
  base?: string;
  /** Whose it is (see WorkspaceRecord.owner). */
  owner: string;
}

/** A workspace's owner: the one recorded (made through `cs serve`), else the local user. */
export function ownerOf(record: Pick<WorkspaceRecord, 'owner'>): string {
  return record.owner ?? currentUser().user;
}

/** The one name rule, for sandboxes and workspaces alike; names are stored lower-case, so unique regardless of case. */
export function checkWorkspaceName(name: string): string {
  if (!isResourceName(name)) throw new UsageError(`invalid workspace name "${name}": a name ${RESOURCE_NAME_RULE}`);
  return name.toLowerCase();
}

function checkFree(name: string, env?: LifecycleOptions['env']): Promise<void> {
  return listWorkspaces(env).then((all) => {
    const taken = all.find((w) => w.sandbox === name);
    if (taken) {
      throw new InputError(`the name "${name}" is taken by ${taken.sandbox === taken.workspace ? 'a workspace' : `sandbox ${taken.sandbox}`}`, {
        code: 'EXISTS',
        suggestions: ['names are unique per user regardless of case; pick another, or remove the old one with `cs workspace remove`'],
      });
    }
  });
}

/** The definition a standalone workspace would have, run through the same reader as files (one set of rules and defaults). */
async function standaloneModel(options: StandaloneOptions, extra: Record<string, unknown> = {}): Promise<Sandbox> {
  const base = options.snapshot ?? (options.image ? (options.image.startsWith('oci://') ? options.image : `oci://${options.image}`) : undefined);
  if (!base) throw new UsageError('say what the workspace boots: --image REF (an OCI image) or --snapshot NAME (a base snapshot), or copy one with --clone-from NAME');
  if (options.image && options.snapshot) throw new UsageError('give either --image or --snapshot, not both');
  const config = await loadConfig(options.env ? { env: options.env } : {});
  const resources: Record<string, unknown> = { disk: `${options.diskBytes ?? config.workspaces.diskBytes}B` };
  if (options.cpus !== undefined) resources['cpus'] = options.cpus;
  if (options.memoryMiB !== undefined) resources['memory'] = `${options.memoryMiB}Mi`;
  const { stringify } = await import('yaml');
  const text = stringify({ name: options.name, workspaces: [{ name: options.name, base_snapshot: base, resources, ...extra }] });
  const parsed = parseDefinition({ file: `cs workspace create ${options.name}`, text, kind: 'sandbox' });
  if (!parsed.ok) throw new DefinitionError(parsed.issues);
  if (parsed.kind !== 'sandbox') throw new InputError('not a sandbox definition');
  return parsed.model;
}

export async function createStandalone(options: StandaloneOptions & { cloneFrom?: string }): Promise<WorkspaceInfo> {
  const name = checkWorkspaceName(options.name);
  if (options.cloneFrom) {
    const ignored = [options.image && '--image', options.snapshot && '--snapshot', options.diskBytes !== undefined && '--disk', options.cpus !== undefined && '--cpus', options.memoryMiB !== undefined && '--memory', options.personal && '--personal'].filter(Boolean);
    if (ignored.length > 0) throw new UsageError(`a clone has its source's image, disk and resources: drop ${ignored.join(', ')}`);
    return cloneWorkspace({ ...options, name, from: options.cloneFrom });
  }
  await checkFree(name, options.env);
  const model = await standaloneModel({ ...options, name });
  return createFrom(model, name, options, {});
}

async function createFrom(model: Sandbox, name: string, options: StandaloneOptions, origin: WorkspaceRecord['origin']): Promise<WorkspaceInfo> {
  const { createFromModel } = await import('./create.js');
  await createFromModel(model, {
    file: '',
    start: options.start ?? false,
    wait: true,
    extra: { standalone: true, ...(options.owner ? { owner: options.owner } : {}), ...(options.ephemeral ? { ephemeral: true } : {}), ...(options.template ? { template: true } : {}), ...(options.label ? { label: options.label } : {}), ...(origin ? { origin } : {}) },
    ...(options.personal ? { personal: options.personal } : {}),
    ...(options.env ? { env: options.env } : {}),
    ...(options.onPhase ? { onPhase: options.onPhase } : {}),
  });
  return showWorkspace({ target: name, ...(options.env ? { env: options.env } : {}) });
}

/**
 * `cs workspace import --git URL`: a workspace whose `/workspace` is a
 * clone of the repository. The clone is a checkout of its definition
 * (cloned on the host, copied in as the owner), so it runs again on a boot
 * that finds `/workspace` empty: a lost disk comes back with the code.
 */
export async function importGit(options: StandaloneOptions & { url: string; ref?: string }): Promise<WorkspaceInfo> {
  const name = checkWorkspaceName(options.name);
  await checkFree(name, options.env);
  if (options.url.startsWith('-')) throw new UsageError(`"${options.url}" is not a git URL`);
  options.onPhase?.(`look up ${options.ref ?? 'the default branch'} in ${options.url}`);
  const commit = await resolveGitRef(options.url, options.ref);
  const model = await standaloneModel({ ...options, name }, {
    checkouts: [{ path: 'workspace', repo: { git: options.url }, ...(options.ref ? { version_spec: options.ref } : {}) }],
  });
  for (const ws of model.workspaces) for (const c of ws.checkouts) c.dest = '/workspace';
  return createFrom(model, name, { ...options, start: true }, { git: { url: options.url, ...(options.ref ? { ref: options.ref } : {}), commit, path: '/workspace' } });
}

/** The commit a ref names in a repository (its default branch when no ref is given), asked of the repository itself. */
async function resolveGitRef(url: string, ref: string | undefined): Promise<string> {
  if (ref && /^[0-9a-f]{40}$/i.test(ref)) return ref.toLowerCase();
  const result = await run('git', ['ls-remote', '--', url, ref ?? 'HEAD'], { env: { GIT_TERMINAL_PROMPT: '0' }, timeoutMs: 120_000 }).catch((error: Error) => {
    throw new InputError(`cannot read the git repository ${url}: ${error.message.split('\n').slice(-2).join(' ')}`, { code: 'GIT_FAILED', cause: error });
  });
  // ls-remote matches refs that merely end with REF; take the exact one, branch before tag as `git clone --branch` does, a tag peeled.
  const refs = new Map<string, string>();
  for (const l of result.stdout.split('\n')) {
    const [sha, name] = l.split('\t');
    if (sha && name) refs.set(name, sha);
  }
  const commit = ref
    ? (refs.get(`refs/heads/${ref}`) ?? refs.get(`refs/tags/${ref}^{}`) ?? refs.get(`refs/tags/${ref}`))
    : refs.get('HEAD');
  if (!commit) {
    throw new InputError(`${url} has no ${ref ? `branch or tag "${ref}"` : 'default branch'}`, {
      code: 'NOT_FOUND',
      suggestions: ref && /^[0-9a-f]{7,39}$/i.test(ref) ? ['give a commit as its full 40-character id'] : ['see `git ls-remote URL`'],
    });
  }
  return commit.toLowerCase();
}

/**
 * A clone: its own metadata and a disk that starts as the source's latest
 * state. The source's top is frozen (it gets a new empty top) and linked
 * into the clone, which writes to its own overlay: neither ever sees the
 * other's writes, and the time taken does not depend on what the disk
 * holds. The source must be stopped, so the frozen state is a clean one.
 */
export async function cloneWorkspace(options: StandaloneOptions & { from: string }): Promise<WorkspaceInfo> {
  const name = checkWorkspaceName(options.name);
  await checkFree(name, options.env);
  const source = await resolveWorkspace(options.from, options.env);
  await checkQuota({ adding: 2 * OVERLAY_BYTES, what: `cloning ${options.from} as ${name}`, ...(options.env ? { env: options.env } : {}) });
  const root = join(sandboxesDir(options.env), name);
  await withLock(join(source.dir, FILES.lock), { purpose: `cloning ${options.from}` }, async () => {
    let record = await readRecord(source.dir);
    if (!record) throw new InputError(`workspace ${options.from} does not exist`, { code: 'NOT_FOUND' });
    const shown = displayName(source, record.standalone);
    const sourceRun = await readRun(source.dir);
    if (supervisorAlive(sourceRun)) {
      throw new InputError(`workspace ${shown} is running; a clone copies a stopped disk`, {
        code: 'RUNNING',
        suggestions: [`stop it first with \`cs workspace stop ${shown}\`, then clone it`],
      });
    }
    // A VM whose supervisor died still writes to the top: it is stopped before the top is frozen.
    await killOrphanQemu(source.dir, sourceRun);
    record = await prepareDisk(source.dir, record, { boot: false });
    const disk = record.disk as NonNullable<WorkspaceRecord['disk']>;
    const { state, frozen } = await freezeTop(source.dir, disk, record.diskBytes);
    if (state !== disk) await writeRecord(source.dir, { ...record, disk: state });
    await sealed(source.dir, frozen);

    // The clone boots from the source's root: claimed, so that a prune does not take it before the clone's record names it.
    if (!(await claimRootImages(record.lowers))) throw new InputError(`the root image of ${shown} is gone; run \`cs apply\` on its definition to build it again`);
    const staging = join(sandboxesDir(options.env), `.new-${name}-${process.pid}-${Date.now()}`);
    const dir = join(staging, name);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    try {
      options.onPhase?.(`link ${shown}'s disk`);
      const parents = await linkChain(source.dir, dir, state, frozen);
      const top = await overlayOn(dir, frozen, record.diskBytes);
      const clone: WorkspaceRecord = {
        ...record,
        sandbox: name,
        name,
        file: '',
        standalone: true,
        createdAt: new Date().toISOString(),
        desired: options.start ? 'running' : 'suspended',
        spec: { ...record.spec, name },
        disk: { top, parents: { ...parents, [top]: frozen }, pristine: top },
        restorePoints: [],
        origin: { ...record.origin, clonedFrom: shown },
        ports: await allocatePorts(record.spec.ports, await portsInUse(options.env)),
      };
      delete clone.template;
      delete clone.label;
      delete clone.owner;
      if (options.owner) clone.owner = options.owner;
      if (options.template) clone.template = true;
      if (options.label) clone.label = options.label;
      await writeRecord(dir, clone);
      await writeFile(join(staging, 'sandbox.json'), JSON.stringify({ name, file: '', createdAt: clone.createdAt }, null, 2) + '\n');
      await rename(staging, root).catch((error: NodeJS.ErrnoException) => {
        throw new InputError(`the name "${name}" was taken by someone else meanwhile`, { cause: error });
      });
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
  });
  if (options.start) await startWorkspace({ sandbox: name, workspace: name, dir: join(root, name) }, { ...options, wait: true });
  return showWorkspace({ target: name, ...(options.env ? { env: options.env } : {}) });
}

async function info(ref: WorkspaceRef): Promise<WorkspaceInfo | undefined> {
  const [summary, record] = await Promise.all([summarize(ref.dir), readRecord(ref.dir)]);
  if (!summary || !record) return undefined;
  const base = record.images?.find((i) => i.kind === 'base');
  return {
    ...summary,
    id: displayName(ref, record.standalone),
    standalone: record.standalone ?? false,
    template: record.template ?? false,
    ...(record.label ? { label: record.label } : {}),
    ...(record.origin ? { origin: record.origin } : {}),
    owner: ownerOf(record),
    restorePoints: record.restorePoints?.length ?? 0,
    ...(base ? { base: base.snapshot ?? base.reference } : {}),
  };
}

export async function listAllWorkspaces(options: LifecycleOptions & { templates?: boolean } = {}): Promise<WorkspaceInfo[]> {
  const out: WorkspaceInfo[] = [];
  for (const ref of await listWorkspaces(options.env)) {
    const found = await info(ref);
    if (found && (!options.templates || found.template)) out.push(found);
  }
  return out;
}

export async function showWorkspace(options: LifecycleOptions & { target: string }): Promise<WorkspaceInfo & { bytes: number }> {
  const ref = await resolveWorkspace(options.target, options.env);
  const found = await info(ref);
  if (!found) throw new InputError(`workspace ${options.target} does not exist`, { code: 'NOT_FOUND' });
  const usage = await usageReport(options.env);
  return { ...found, bytes: usage.workspaces.find((w) => w.workspace === found.id)?.bytes ?? 0 };
}

export async function labelWorkspace(options: LifecycleOptions & { target: string; label?: string }): Promise<WorkspaceInfo> {
  const ref = await resolveWorkspace(options.target, options.env);
  if (options.label !== undefined && (options.label.length > 200 || /[\u0000-\u001f\u007f]/.test(options.label))) {
    throw new UsageError('a label is at most 200 characters, without control characters');
  }
  await withLock(join(ref.dir, FILES.lock), { purpose: `labelling ${options.target}` }, async () => {
    const record = await readRecord(ref.dir);
    if (!record) throw new InputError(`workspace ${options.target} does not exist`, { code: 'NOT_FOUND' });
    const next = { ...record };
    if (options.label) next.label = options.label;
    else delete next.label;
    await writeRecord(ref.dir, next);
  });
  return (await info(ref)) as WorkspaceInfo;
}

/** Removes a workspace: the whole sandbox when it is the only one there (always so for `cs workspace create`'s). */
export async function removeWorkspace(options: LifecycleOptions & { target: string; force?: boolean }): Promise<{ removed: string }> {
  const ref = await resolveWorkspace(options.target, options.env);
  const record = await readRecord(ref.dir);
  const shown = displayName(ref, record?.standalone);
  const busy = await activeCommands(ref.dir);
  if (busy.length > 0 && !options.force) {
    throw new InputError(`commands are running in ${shown}: ${describeCommands(busy)}`, { code: 'BUSY', suggestions: ['wait for them, or pass --force to stop the workspace under them'] });
  }
  const siblings = (await listWorkspaces(options.env)).filter((w) => w.sandbox === ref.sandbox);
  if (siblings.length <= 1) {
    await removeSandbox({ name: ref.sandbox, ...(options.env ? { env: options.env } : {}), ...(options.onPhase ? { onPhase: options.onPhase } : {}) });
    return { removed: shown };
  }
  await retireWorkspace(ref, options);
  await discardFolder(ref.dir, `${ref.sandbox}-${ref.workspace}`, options.env);
  await pruneUnusedRootImages(options);
  return { removed: shown };
}
