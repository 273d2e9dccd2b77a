import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { loadSandbox } from '../definition/load.js';
import type { Sandbox, Workspace } from '../definition/model.js';
import { WORKSPACE_HOME } from '../definition/model.js';
import { isResourceName, RESOURCE_NAME_RULE } from '../definition/names.js';
import { loadConfig } from '../oci/config.js';
import { openImageContext } from '../oci/image.js';
import { assemble } from '../rootfs/assemble.js';
import { NotStackable } from '../rootfs/erofs-stack.js';
import { ensurePersonalDir } from '../snapshot/catalogue.js';
import { resolvePersonal, resolveSnapshot, type ResolvedSnapshot } from '../snapshot/resolve.js';
import { InputError, UsageError, VmError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import { chooseAccelerator } from '../vm/accel.js';
import type { Accelerator } from '../vm/qemu.js';
import { ensureInitramfs } from '../vm/initramfs.js';
import { bootImage, ensureKernel, type Kernel } from '../vm/kernel.js';
import { QEMU_BINARY } from '../vm/qemu.js';
import { resolveKernel } from './kernel-image.js';
import { discardFolder, portsInUse, showSandbox, startSupervisor, waitUntil, type LifecycleOptions, type SandboxResult } from './lifecycle.js';
import { newDisk } from './disk.js';
import { allocatePorts } from './ports.js';
import { checkQuota, freshDiskBytes } from './usage.js';
import { claimRootImages, imagesDir } from './root-images.js';
import { FILES, sandboxesDir, writeRecord, type WorkspaceImage, type WorkspaceRecord } from './state.js';

/**
 * `cs sandbox create`: from a definition to running workspaces. Kept apart
 * from lifecycle.ts because it needs the definition reader, the layer
 * assembler and the kernel tools, which the other commands should not pay
 * to load.
 */

/** Base, home, then the user's personal snapshot: what a workspace's root is assembled from. */
export async function snapshotsOf(sandbox: string, ws: Workspace, personal: ResolvedSnapshot | undefined, env?: Env): Promise<ResolvedSnapshot[]> {
  const where = `workspace ${sandbox}/${ws.name}`;
  if (!ws.baseSnapshot) {
    throw new InputError(`${where} has no base_snapshot, so there is nothing to boot`, {
      suggestions: ['set `base_snapshot: NAME` (a snapshot) or `base_snapshot: oci://REF` (an image) in the definition'],
    });
  }
  const inWorkspace = (error: unknown): never => {
    if (error instanceof InputError) error.message = `${where}: ${error.message}`;
    throw error;
  };
  const out: ResolvedSnapshot[] = [await resolveSnapshot(ws.baseSnapshot, 'base', env).catch(inWorkspace)];
  if (ws.homeSnapshot) out.push(await resolveSnapshot(ws.homeSnapshot, 'home', env).catch(inWorkspace));
  if (personal) out.push(personal);
  return out;
}

/** What a workspace record keeps of the images it booted from (a snapshot of it extends its base, as it was). */
async function imagesOf(snapshots: readonly ResolvedSnapshot[], env?: Env): Promise<WorkspaceImage[]> {
  const out: WorkspaceImage[] = [];
  for (const s of snapshots) {
    const digest = s.digest ?? (await (s.store ?? (await openImageContext(env ? { env } : {})).store).resolveTag(s.reference))?.digest;
    out.push({ kind: s.kind, reference: s.reference, ...(s.snapshot ? { snapshot: s.snapshot } : {}), ...(digest ? { digest } : {}) });
  }
  return out;
}

export interface CreateOptions extends LifecycleOptions {
  file: string;
  /** Boot the workspaces (default true); false leaves them stopped until first used. */
  start?: boolean;
  /** Fields of the records that do not come from the definition (`cs workspace create`). */
  extra?: Pick<WorkspaceRecord, 'standalone' | 'template' | 'label' | 'origin' | 'owner' | 'ephemeral'>;
  /** The sandbox's name; default the definition's. */
  name?: string;
  wait?: boolean;
  waitTimeoutMs?: number;
  /** The personal snapshot to apply: a name, NONE, or (undefined) the user's default. */
  personal?: string;
  /** The definition version the records are made from (`cs apply`). */
  applied?: WorkspaceRecord['applied'];
}


function checkName(name: string): string {
  if (!isResourceName(name)) throw new UsageError(`invalid sandbox name "${name}": ${RESOURCE_NAME_RULE}`);
  return name.toLowerCase();
}

/** QEMU is looked up before anything is built, so its absence costs nothing to find out. */
function requireQemu(): void {
  const found = (process.env['PATH'] ?? '').split(':').some((dir) => dir !== '' && existsSync(join(dir, QEMU_BINARY)));
  if (!found) {
    throw new VmError(`${QEMU_BINARY} is not installed`, { code: 'MISSING_TOOL', suggestions: ['run `cs setup` as root (or apt-get install qemu-system-x86)', 'see `cs doctor`'] });
  }
}

export async function createSandbox(options: CreateOptions): Promise<SandboxResult> {
  return createFromModel(await loadSandbox({ file: options.file }), options);
}

/** What every workspace of one creation shares: the default kernel and initramfs, the accelerator, the config. */
interface BootContext {
  kernel: Kernel;
  initramfs: { path: string };
  accel: Accelerator;
  config: Awaited<ReturnType<typeof loadConfig>>;
}

async function bootContext(env: Env | undefined, phase: (p: string) => void): Promise<BootContext> {
  requireQemu();
  const envOpt = env ? { env } : {};
  const config = await loadConfig(envOpt);
  phase('kernel');
  const kernel = await ensureKernel({ ...envOpt, onPhase: phase });
  phase('initramfs');
  const initramfs = await ensureInitramfs({ kernel, ...envOpt });
  phase('accelerator');
  const verdict = await chooseAccelerator({ kernel: kernel.vmlinuz, initrd: initramfs.path, ...envOpt });
  return { kernel, initramfs, accel: verdict.accel, config };
}

/**
 * A workspace's read-only root: its snapshots as a stack of images for
 * overlayfs (erofs-stack.ts), the base's shared by every workspace on that
 * base, each later snapshot's holding only what it changed; an image made
 * from a personal snapshot is as private as the snapshot, in the user's own
 * folder. A stack overlayfs could misread (a layer with overlayfs's own
 * markers in it) falls back to one self-contained image.
 */
export async function rootImage(
  ws: Workspace,
  snapshots: readonly ResolvedSnapshot[],
  options: { env?: Env; onPhase?: (phase: string) => void },
): Promise<Pick<WorkspaceRecord, 'lowers' | 'images' | 'chainId'>> {
  const personal = snapshots.some((s) => s.kind === 'personal');
  const privateDir = personal ? await ensurePersonalDir(options.env) : undefined;
  const imageDir = (isPrivate: boolean): string => (isPrivate && privateDir ? join(privateDir, 'images') : imagesDir(options.env));
  const common = {
    snapshots,
    ...(privateDir ? { privateDir } : {}),
    format: 'erofs' as const,
    home: WORKSPACE_HOME,
    ...(options.env ? { env: options.env } : {}),
    onPhase: (p: string) => options.onPhase?.(`${ws.name}: ${p}`),
  };
  const build = async (): Promise<{ lowers: string[]; chainId: string }> => {
    try {
      const stack = await assemble({ ...common, stack: true, out: (chain, level) => join(imageDir(level?.private ?? personal), `${chain.replace(/^sha256:/, '')}${level && level.index > 0 ? '.overlay' : ''}.erofs`) });
      return { lowers: stack.lowers ?? [stack.out], chainId: stack.chainId };
    } catch (error) {
      if (!(error instanceof InputError && error.cause instanceof NotStackable)) throw error;
      options.onPhase?.(`${ws.name}: one self-contained image (${error.cause.message})`);
      const image = await assemble({ ...common, out: (chain) => join(imageDir(personal), `${chain.replace(/^sha256:/, '')}.erofs`) });
      return { lowers: [image.out], chainId: image.chainId };
    }
  };
  // Until the workspace's record names them, only a claim keeps a prune (another cs removing a workspace) off them;
  // an image a prune took between the build and the claim is built again.
  let root = await build();
  while (!(await claimRootImages(root.lowers))) root = await build();
  return { lowers: root.lowers, images: await imagesOf(snapshots, options.env), chainId: root.chainId };
}

/** The definition's kernel, else the config's, else Debian's; with the initramfs that goes with it. */
export async function kernelFields(ws: Workspace, options: { env?: Env; onPhase?: (phase: string) => void; context?: BootContext }): Promise<Pick<WorkspaceRecord, 'kernel' | 'initramfs'>> {
  const envOpt = options.env ? { env: options.env } : {};
  const context = options.context ?? (await bootContext(options.env, () => undefined));
  const kernelRef = ws.kernel.kind === 'oci' ? ws.kernel : context.config.kernel ? { kind: 'oci' as const, ...context.config.kernel } : undefined;
  const wsKernel = kernelRef ? await resolveKernel(kernelRef, { ...envOpt, onPhase: (p) => options.onPhase?.(`${ws.name}: ${p}`) }) : context.kernel;
  const wsInitramfs = wsKernel === context.kernel ? context.initramfs : await ensureInitramfs({ kernel: wsKernel, ...envOpt });
  return { kernel: { version: wsKernel.version, vmlinuz: wsKernel.vmlinuz, boot: await bootImage(wsKernel) }, initramfs: wsInitramfs.path };
}

interface NewWorkspace {
  sandbox: string;
  ws: Workspace;
  snapshots: ResolvedSnapshot[];
  /** The folder to fill (a staging folder, renamed into place by the caller). */
  dir: string;
  file: string;
  start: boolean;
  extra?: CreateOptions['extra'];
  applied?: WorkspaceRecord['applied'];
  taken: Set<number>;
  context: BootContext;
  env?: Env;
  onPhase: (phase: string) => void;
}

/** One workspace's folder: its root image, kernel, disk and record. */
async function makeWorkspace(n: NewWorkspace): Promise<void> {
  n.onPhase(`snapshots of ${n.ws.name}`);
  const root = await rootImage(n.ws, n.snapshots, { ...(n.env ? { env: n.env } : {}), onPhase: n.onPhase });
  const boot = await kernelFields(n.ws, { ...(n.env ? { env: n.env } : {}), onPhase: n.onPhase, context: n.context });
  await mkdir(n.dir, { mode: 0o700 });
  n.onPhase(`disk of ${n.ws.name}`);
  const disk = await newDisk(n.dir, n.ws.resources.diskBytes);
  const record: WorkspaceRecord = {
    version: 1,
    sandbox: n.sandbox,
    name: n.ws.name,
    file: n.file,
    ...n.extra,
    ...(n.applied ? { applied: n.applied } : {}),
    createdAt: new Date().toISOString(),
    desired: n.start ? 'running' : 'suspended',
    disk,
    spec: n.ws,
    ...root,
    ...boot,
    accel: n.context.accel,
    cpus: n.ws.resources.cpus,
    memoryMiB: n.ws.resources.memoryMiB,
    diskBytes: n.ws.resources.diskBytes,
    ports: await allocatePorts(n.ws.ports, n.taken),
  };
  await writeRecord(n.dir, record);
}

/** A sandbox's workspaces from its validated model: records, disks, and (unless told not to) their boot. */
export async function createFromModel(sandbox: Sandbox, options: CreateOptions): Promise<SandboxResult> {
  const phase = options.onPhase ?? (() => undefined);
  const start = options.start ?? true;
  const name = checkName(options.name ?? sandbox.name);
  const root = join(sandboxesDir(options.env), name);
  // Stored absolute: `cs apply` and `cs sandbox list` compare it from other folders.
  const file = options.file === '' ? '' : resolve(options.file);
  await clearLeftover(root, options.env);
  if (existsSync(root)) {
    throw new InputError(`sandbox "${name}" already exists`, { suggestions: [`remove it first with \`cs sandbox remove ${name}\`, or pick another name`] });
  }
  if (sandbox.workspaces.length === 0) throw new InputError(`${options.file} defines no workspaces`);
  const personal = await resolvePersonal(options.personal, options.env);
  const plans: { ws: Workspace; snapshots: ResolvedSnapshot[] }[] = [];
  for (const ws of sandbox.workspaces) plans.push({ ws, snapshots: await snapshotsOf(name, ws, personal, options.env) });

  requireQemu();
  // The disks are what counts against the cap: a fresh ext4 costs its metadata.
  await checkQuota({ adding: plans.reduce((sum, p) => sum + freshDiskBytes(p.ws.resources.diskBytes), 0), what: `creating ${name}`, ...(options.env ? { env: options.env } : {}) });
  const context = await bootContext(options.env, phase);

  await mkdir(sandboxesDir(options.env), { recursive: true });
  const staging = join(sandboxesDir(options.env), `.new-${name}-${process.pid}-${Date.now()}`);
  // A workspace's folder and disk are its creator's alone: the disk holds whatever they write, personal files included.
  await mkdir(staging, { mode: 0o700 });
  try {
    const taken = await portsInUse(options.env);
    for (const { ws, snapshots } of plans) {
      await makeWorkspace({
        sandbox: name,
        ws,
        snapshots,
        dir: join(staging, ws.name),
        file,
        start,
        ...(options.extra ? { extra: options.extra } : {}),
        ...(options.applied ? { applied: options.applied } : {}),
        taken,
        context,
        ...(options.env ? { env: options.env } : {}),
        onPhase: phase,
      });
    }
    await writeFile(join(staging, 'sandbox.json'), JSON.stringify({ name, file, createdAt: new Date().toISOString() }, null, 2) + '\n');
    await rename(staging, root).catch((error: NodeJS.ErrnoException) => {
      throw new InputError(`sandbox "${name}" was created by someone else meanwhile`, { cause: error });
    });
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
  if (!start) return showSandbox({ name, ...(options.env ? { env: options.env } : {}) });
  for (const { ws } of plans) {
    phase(`start ${ws.name}`);
    await startSupervisor(join(root, ws.name), options.env);
  }
  for (const { ws } of plans) await waitUntil(join(root, ws.name), options.wait ? 'ready' : 'booted', { ...options, onPhase: phase });
  return showSandbox({ name, ...(options.env ? { env: options.env } : {}) });
}

/**
 * A folder a crash left behind while a workspace or sandbox was removed
 * (its records renamed away first, see retireWorkspace): nothing in it is a
 * workspace any more, so it is cleared before one is made under its name.
 */
async function clearLeftover(dir: string, env?: Env): Promise<void> {
  if (!existsSync(dir) || existsSync(join(dir, FILES.record))) return;
  const entries = await readdir(dir).catch(() => [] as string[]);
  if (entries.some((e) => !e.startsWith('.') && existsSync(join(dir, e, FILES.record)))) return;
  await discardFolder(dir, `leftover-${basename(dir)}`, env);
}

/**
 * One new workspace in an existing sandbox (a workspace added to its
 * definition): built in a hidden folder beside its siblings and renamed
 * into place, so a crash leaves nothing that looks like a workspace.
 */
export async function addWorkspace(options: {
  sandbox: string;
  ws: Workspace;
  file: string;
  start: boolean;
  /** Wait until it is ready (its start-up done), not only booted. */
  wait?: boolean;
  applied?: WorkspaceRecord['applied'];
  personal?: string;
  env?: Env;
  onPhase?: (phase: string) => void;
}): Promise<void> {
  const phase = options.onPhase ?? (() => undefined);
  const root = join(sandboxesDir(options.env), options.sandbox);
  const dir = join(root, options.ws.name);
  await clearLeftover(dir, options.env);
  if (existsSync(dir)) throw new InputError(`sandbox "${options.sandbox}" already has a workspace "${options.ws.name}"`);
  const personal = await resolvePersonal(options.personal, options.env);
  const snapshots = await snapshotsOf(options.sandbox, options.ws, personal, options.env);
  await checkQuota({ adding: freshDiskBytes(options.ws.resources.diskBytes), what: `creating ${options.sandbox}/${options.ws.name}`, ...(options.env ? { env: options.env } : {}) });
  const context = await bootContext(options.env, phase);
  const staging = join(root, `.new-${options.ws.name}-${process.pid}-${Date.now()}`);
  try {
    await makeWorkspace({
      sandbox: options.sandbox,
      ws: options.ws,
      snapshots,
      dir: staging,
      file: options.file,
      start: options.start,
      ...(options.applied ? { applied: options.applied } : {}),
      taken: await portsInUse(options.env),
      context,
      ...(options.env ? { env: options.env } : {}),
      onPhase: phase,
    });
    await rename(staging, dir);
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
  if (!options.start) return;
  await startSupervisor(dir, options.env);
  await waitUntil(dir, options.wait ? 'ready' : 'booted', { ...(options.env ? { env: options.env } : {}), onPhase: phase });
}
