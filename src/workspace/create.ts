import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadSandbox } from '../definition/load.js';
import type { Sandbox, Workspace } from '../definition/model.js';
import { WORKSPACE_HOME } from '../definition/model.js';
import { isResourceName, RESOURCE_NAME_RULE } from '../definition/names.js';
import { loadConfig } from '../oci/config.js';
import { openImageContext } from '../oci/image.js';
import { assemble } from '../rootfs/assemble.js';
import { ensurePersonalDir } from '../snapshot/catalogue.js';
import { resolvePersonal, resolveSnapshot, type ResolvedSnapshot } from '../snapshot/resolve.js';
import { InputError, UsageError, VmError } from '../util/errors.js';
import { dataDir, type Env } from '../util/paths.js';
import { chooseAccelerator } from '../vm/accel.js';
import { ensureInitramfs } from '../vm/initramfs.js';
import { bootImage, ensureKernel } from '../vm/kernel.js';
import { QEMU_BINARY } from '../vm/qemu.js';
import { resolveKernel } from './kernel-image.js';
import { portsInUse, showSandbox, startSupervisor, waitUntil, type LifecycleOptions, type SandboxResult } from './lifecycle.js';
import { newDisk } from './disk.js';
import { allocatePorts } from './ports.js';
import { checkQuota, freshDiskBytes } from './usage.js';
import { FILES, sandboxesDir, writeRecord, type WorkspaceImage, type WorkspaceRecord } from './state.js';

/**
 * `cs sandbox create`: from a definition to running workspaces. Kept apart
 * from lifecycle.ts because it needs the definition reader, the layer
 * assembler and the kernel tools, which the other commands should not pay
 * to load.
 */

/** Base, home, then the user's personal snapshot: what a workspace's root is assembled from. */
async function snapshotsOf(sandbox: string, ws: Workspace, personal: ResolvedSnapshot | undefined, env?: Env): Promise<ResolvedSnapshot[]> {
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

export function imagesDir(env?: Env): string {
  return join(dataDir(env), 'images');
}

export interface CreateOptions extends LifecycleOptions {
  file: string;
  /** Boot the workspaces (default true); false leaves them stopped until first used. */
  start?: boolean;
  /** Fields of the records that do not come from the definition (`cs workspace create`). */
  extra?: Pick<WorkspaceRecord, 'standalone' | 'template' | 'label' | 'origin'>;
  /** The sandbox's name; default the definition's. */
  name?: string;
  wait?: boolean;
  waitTimeoutMs?: number;
  /** The personal snapshot to apply: a name, NONE, or (undefined) the user's default. */
  personal?: string;
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

/** A sandbox's workspaces from its validated model: records, disks, and (unless told not to) their boot. */
export async function createFromModel(sandbox: Sandbox, options: CreateOptions): Promise<SandboxResult> {
  const phase = options.onPhase ?? (() => undefined);
  const start = options.start ?? true;
  const name = checkName(options.name ?? sandbox.name);
  const root = join(sandboxesDir(options.env), name);
  if (existsSync(root)) {
    throw new InputError(`sandbox "${name}" already exists`, { suggestions: [`remove it first with \`cs sandbox remove ${name}\`, or pick another name`] });
  }
  if (sandbox.workspaces.length === 0) throw new InputError(`${options.file} defines no workspaces`);
  const personal = await resolvePersonal(options.personal, options.env);
  const plans: { ws: Workspace; snapshots: ResolvedSnapshot[] }[] = [];
  for (const ws of sandbox.workspaces) plans.push({ ws, snapshots: await snapshotsOf(name, ws, personal, options.env) });
  // A root with a personal snapshot in it is as private as the snapshot: it is kept in the user's own folder.
  const privateDir = personal ? await ensurePersonalDir(options.env) : undefined;

  requireQemu();
  // The disks are what counts against the cap: a fresh ext4 costs its metadata.
  await checkQuota({ adding: plans.reduce((sum, p) => sum + freshDiskBytes(p.ws.resources.diskBytes), 0), what: `creating ${name}`, ...(options.env ? { env: options.env } : {}) });
  const envOpt = options.env ? { env: options.env } : {};
  const config = await loadConfig(envOpt);
  phase('kernel');
  const kernel = await ensureKernel({ ...envOpt, onPhase: phase });
  phase('initramfs');
  const initramfs = await ensureInitramfs({ kernel, ...envOpt });
  phase('accelerator');
  const verdict = await chooseAccelerator({ kernel: kernel.vmlinuz, initrd: initramfs.path, ...envOpt });

  await mkdir(sandboxesDir(options.env), { recursive: true });
  const staging = join(sandboxesDir(options.env), `.new-${name}-${process.pid}-${Date.now()}`);
  // A workspace's folder and disk are its creator's alone: the disk holds whatever they write, personal files included.
  await mkdir(staging, { mode: 0o700 });
  try {
    const taken = await portsInUse(options.env);
    for (const { ws, snapshots } of plans) {
      phase(`snapshots of ${ws.name}`);
      const image = await assemble({
        snapshots,
        out: (chain) => join(privateDir ? join(privateDir, 'images') : imagesDir(options.env), `${chain.replace(/^sha256:/, '')}.erofs`),
        ...(privateDir ? { privateDir } : {}),
        format: 'erofs',
        home: WORKSPACE_HOME,
        ...envOpt,
        onPhase: (p) => phase(`${ws.name}: ${p}`),
      });
      // The definition's kernel, else the config's, else Debian's.
      const kernelRef = ws.kernel.kind === 'oci' ? ws.kernel : config.kernel ? { kind: 'oci' as const, ...config.kernel } : undefined;
      const wsKernel = kernelRef ? await resolveKernel(kernelRef, { ...envOpt, onPhase: (p) => phase(`${ws.name}: ${p}`) }) : kernel;
      const wsInitramfs = wsKernel === kernel ? initramfs : await ensureInitramfs({ kernel: wsKernel, ...envOpt });
      const dir = join(staging, ws.name);
      await mkdir(dir, { mode: 0o700 });
      phase(`disk of ${ws.name}`);
      const disk = await newDisk(dir, ws.resources.diskBytes);
      const record: WorkspaceRecord = {
        version: 1,
        sandbox: name,
        name: ws.name,
        file: options.file,
        ...options.extra,
        createdAt: new Date().toISOString(),
        desired: start ? 'running' : 'suspended',
        disk,
        spec: ws,
        lowers: [image.out],
        images: await imagesOf(snapshots, options.env),
        chainId: image.chainId,
        kernel: { version: wsKernel.version, vmlinuz: wsKernel.vmlinuz, boot: await bootImage(wsKernel) },
        initramfs: wsInitramfs.path,
        accel: verdict.accel,
        cpus: ws.resources.cpus,
        memoryMiB: ws.resources.memoryMiB,
        diskBytes: ws.resources.diskBytes,
        ports: await allocatePorts(ws.ports, taken),
      };
      await writeRecord(dir, record);
    }
    await writeFile(join(staging, 'sandbox.json'), JSON.stringify({ name, file: options.file, createdAt: new Date().toISOString() }, null, 2) + '\n');
    await rename(staging, root).catch((error: NodeJS.ErrnoException) => {
      throw new InputError(`sandbox "${name}" was created by someone else meanwhile`, { cause: error });
    });
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
  if (!start) return showSandbox({ name, ...envOpt });
  for (const { ws } of plans) {
    phase(`start ${ws.name}`);
    await startSupervisor(join(root, ws.name), options.env);
  }
  if (options.wait) {
    for (const { ws } of plans) await waitUntil(join(root, ws.name), 'ready', { ...options, onPhase: phase });
  } else {
    for (const { ws } of plans) await waitUntil(join(root, ws.name), 'booted', { ...options, onPhase: phase });
  }
  return showSandbox({ name, ...envOpt });
}

