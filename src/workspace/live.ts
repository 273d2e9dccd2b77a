import { join } from 'node:path';
import type { Checkout, Manifest, SystemFile, Workspace } from '../definition/model.js';
import { VmError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import { openAgent, requestForward, requestUnforward } from './control.js';
import { GUEST_BUSYBOX, workspaceEnv } from './guest-env.js';
import { portsInUse } from './lifecycle.js';
import { pickHostPort, qemuProtocol } from './ports.js';
import { appendWorkspaceLog, readRecord, type PortMapping, type WorkspaceRecord, type WorkspaceRef } from './state.js';
import {
  checkout,
  checkoutDir,
  appliedNow,
  daemonsOf,
  guestRun,
  identity,
  launchKeys,
  manifestHashes,
  pidFile,
  readApplied,
  readIds,
  readManifest,
  relayKeys,
  renderedText,
  ROOT_ENV,
  runRepoHooks,
  startDaemon,
  startForward,
  stopNoted,
  waitReady,
  writeApplied,
  writeSystemFile,
  StepError,
  type Applied,
  type Ids,
  type StepContext,
} from './steps.js';

/**
 * Live updates: a running workspace brought from the spec it runs with to a
 * new one without a restart. Only what changed is touched: a system file
 * whose bytes, owner or mode changed is rewritten, a daemon or relay whose
 * launch (command, folder, environment) changed is stopped and started, a
 * new checkout is cloned (an existing folder is never replaced), and the
 * readiness probes are waited for again. The environment needs no action of
 * its own: commands get it from the record when they start, and daemons and
 * templates that use it are among what changed.
 */

function fileKey(file: SystemFile, env: Record<string, string>): string {
  const body = file.kind === 'symlink' ? { target: file.target } : { text: renderedText(file, env) };
  return JSON.stringify({ kind: file.kind, owner: file.owner ?? '', mode: file.mode ?? null, ...body });
}

function checkoutKey(item: Pick<Checkout, 'path' | 'dest'>): string {
  return checkoutDir(item);
}

/** The fields a live update acts on, for comparing what a guest runs with what its record says. */
export function liveFields(spec: Workspace): unknown {
  return { env: spec.env, system: spec.system, checkouts: spec.checkouts.map(checkoutKey), forwards: spec.portForwardRules, probes: spec.probes };
}

export function sameLive(a: Workspace | undefined, b: Workspace): boolean {
  return a !== undefined && JSON.stringify(liveFields(a)) === JSON.stringify(liveFields(b));
}

/** Whether a running guest still has to take its record's spec, or a repo manifest edited in it since. */
export function liveBehind(applied: Applied | undefined, spec: Workspace, manifests: Record<string, string> | undefined): boolean {
  if (!applied || !sameLive(applied.spec, spec) || applied.ready === false) return true;
  return manifests !== undefined && JSON.stringify(manifests) !== JSON.stringify(applied.manifests);
}

/**
 * Applies `ctx.record.spec` to the running guest, coming from `before`
 * (what it was started with or last updated to; undefined when unknown, in
 * which case everything is redone). Returns what it did, in words.
 */
export async function applyLive(ctx: StepContext, before: Applied | undefined): Promise<string[]> {
  const done: string[] = [];
  const after = ctx.record.spec;
  const old = before?.spec;
  const envAfter = workspaceEnv(identity(ctx.record), after);
  const envBefore = old ? workspaceEnv(identity(ctx.record), old) : {};

  // System files.
  let ids: Ids | undefined;
  for (const file of after.system.files) {
    const prev = old?.system.files.find((f) => f.path === file.path);
    if (prev && fileKey(prev, envBefore) === fileKey(file, envAfter)) continue;
    await ctx.step(`system file ${file.path}`, async () => {
      ids ??= await readIds(ctx.client);
      await writeSystemFile(ctx, file, ids, envAfter);
    });
    done.push(`wrote ${file.path}`);
  }
  for (const prev of old?.system.files ?? []) {
    if (after.system.files.some((f) => f.path === prev.path)) continue;
    // A file cs wrote goes with its definition, unless someone changed it in the workspace since.
    const untouched = await ctx.step(`remove system file ${prev.path}`, () => removeIfUnchanged(ctx, prev, envBefore));
    done.push(untouched ? `removed ${prev.path}` : `kept ${prev.path}: it was changed in the workspace`);
  }

  // Checkouts: new ones are cloned (and their repo hooks run); removed ones are the user's files and stay.
  const known = new Set((old?.checkouts ?? []).map(checkoutKey));
  for (const item of after.checkouts) {
    if (old && known.has(checkoutKey(item))) continue;
    const { manifest, cloned } = await ctx.step(`checkout ${item.path}`, () => checkout(ctx, item));
    if (cloned) {
      done.push(`cloned ${item.repo.git} into ${checkoutDir(item)}`);
      if (manifest) await runRepoHooks(ctx, { [item.path]: manifest });
    }
  }

  // Relays of port_forward_rules, by local port: those whose target changed are stopped and started.
  const relays = await relayKeys(ctx);
  const wasRelays = before?.relays ?? Object.fromEntries(Object.keys(relays).map((port) => [port, '']));
  for (const [port, key] of Object.entries(wasRelays)) {
    if (before && relays[port] === key) continue;
    await ctx.step(`stop forward ${port}`, () => stopNoted(ctx, pidFile('forwards', port), `the relay of port ${port}`));
    if (relays[port] === undefined) done.push(`stopped the relay of port ${port}`);
  }
  for (const rule of after.portForwardRules) {
    const port = String(rule.local.port);
    if (before && before.relays[port] === relays[port]) continue;
    await ctx.step(`forward ${port} to ${rule.remote.target}:${rule.remote.port}`, () => startForward(ctx, rule));
    done.push(`started the relay of port ${port}`);
  }

  // Daemons, the definition's and the repos' (manifests as they are now in the workspace), by how they are launched.
  const manifests: Record<string, Manifest> = {};
  for (const item of after.checkouts) {
    const manifest = await readManifest(ctx, item);
    if (manifest) manifests[item.path] = manifest;
  }
  const now = launchKeys(ctx, manifests);
  const was = before?.daemons ?? Object.fromEntries(Object.keys(now).map((name) => [name, '']));
  for (const [name, launch] of Object.entries(was)) {
    if (before && now[name] === launch) continue;
    await ctx.step(`stop daemon ${name}`, () => stopNoted(ctx, pidFile('daemons', name), `daemon ${name}`));
    if (now[name] === undefined) done.push(`stopped daemon ${name}`);
  }
  let restarted = false;
  // Each daemon on its own: one that cannot start does not keep the others down.
  const failed = new Map<string, string>();
  for (const d of daemonsOf(ctx, manifests)) {
    if (before && before.daemons[d.name] === now[d.name]) continue;
    try {
      await ctx.step(`daemon ${d.name}`, () => startDaemon(ctx, d));
    } catch (error) {
      failed.set(d.name, (error as Error).message);
      continue;
    }
    done.push(`${before?.daemons[d.name] !== undefined ? 'restarted' : 'started'} daemon ${d.name}`);
    restarted = true;
  }

  const applied = await appliedNow(ctx, manifests);
  if (failed.size > 0) {
    // Not noted as applied, so the next apply tries them again.
    for (const name of failed.keys()) delete applied.daemons[name];
    await writeApplied(ctx.client, applied);
    throw new StepError(`daemon${failed.size > 1 ? 's' : ''} could not start: ${[...failed].map(([name, why]) => `${name}: ${why}`).join('; ')}`);
  }
  const probesChanged = JSON.stringify(old?.probes) !== JSON.stringify(after.probes);
  if (probesChanged || restarted || done.length > 0 || before?.ready === false) {
    // Noted as applied but not ready first: a retry after failing probes only probes again.
    await writeApplied(ctx.client, { ...applied, ready: false });
    await waitReady(ctx, 5 * 60_000);
    if (probesChanged && after.probes.readiness.length > 0) done.push('readiness probes passed');
  }
  await writeApplied(ctx.client, applied);
  return done;
}

async function removeIfUnchanged(ctx: StepContext, file: SystemFile, env: Record<string, string>): Promise<boolean> {
  if (file.kind === 'symlink') {
    const target = await guestRun(ctx, `reading ${file.path}`, { argv: [GUEST_BUSYBOX, 'sh', '-c', `${GUEST_BUSYBOX} readlink "$1" || true`, 'sh', file.path], env: ROOT_ENV });
    if (target.trim() !== file.target) return false;
  } else {
    const bytes = await ctx.client.readFile(file.path).catch(() => undefined);
    if (bytes === undefined) return true;
    if (bytes.toString('utf8') !== renderedText(file, env)) return false;
  }
  await guestRun(ctx, `removing ${file.path}`, { argv: [GUEST_BUSYBOX, 'rm', '-f', file.path], env: ROOT_ENV });
  return true;
}

/**
 * Brings a running workspace's guest to its record's spec (which the caller
 * has written). Steps and their output go to the workspace log.
 */
export async function liveUpdate(ws: WorkspaceRef, options: { label?: string; log?: (line: string) => void } = {}): Promise<string[]> {
  const record = await readRecord(ws.dir);
  if (!record) throw new VmError(`workspace ${ws.sandbox}/${ws.workspace} does not exist`);
  const client = await openAgent(ws.dir, options.label ?? `${ws.sandbox}/${ws.workspace}`);
  const log = (line: string): void => {
    appendWorkspaceLog(ws.dir, line);
    options.log?.(line);
  };
  try {
    const ctx: StepContext = {
      client,
      record,
      firstBoot: false,
      log,
      siblingPorts: async (workspace) => (await readRecord(join(ws.dir, '..', workspace)))?.ports,
      step: async (name, fn) => {
        log(`==> live update: ${name}`);
        return fn();
      },
    };
    return await applyLive(ctx, await readApplied(client));
  } finally {
    client.close();
  }
}

/**
 * What a running guest was brought to, and its repos' manifests as they are
 * in it now; undefined when it cannot be asked.
 */
export async function appliedState(ws: WorkspaceRef, spec: Workspace): Promise<{ applied?: Applied; manifests: Record<string, string> } | undefined> {
  const client = await openAgent(ws.dir, `${ws.sandbox}/${ws.workspace}`).catch(() => undefined);
  if (!client) return undefined;
  try {
    const applied = await readApplied(client);
    return { ...(applied ? { applied } : {}), manifests: await manifestHashes(client, spec) };
  } finally {
    client.close();
  }
}

/**
 * The record's port mappings for a new list of `ports`: a port kept (same
 * guest port and protocol) keeps its host port, a new one gets a free one,
 * ad hoc forwards (`cs port-forward`) stay. With `running`, QEMU's forwards
 * are changed to match first.
 */
export async function syncPorts(ws: WorkspaceRef, record: WorkspaceRecord, spec: Workspace, options: { running: boolean; env?: Env }): Promise<{ ports: PortMapping[]; changed: string[] }> {
  const defined = record.ports.filter((p) => !p.adhoc);
  const adhoc = record.ports.filter((p) => p.adhoc);
  const out: PortMapping[] = [];
  const changed: string[] = [];
  const matched = new Set<PortMapping>();
  const taken = await portsInUse(options.env);
  for (const port of spec.ports) {
    const existing = defined.find((p) => !matched.has(p) && p.guestPort === port.port && qemuProtocol(p.protocol) === qemuProtocol(port.protocol));
    if (existing) {
      matched.add(existing);
      out.push({ ...existing, name: port.name, protocol: port.protocol });
      continue;
    }
    const hostPort = await pickHostPort(port.port, taken);
    taken.add(hostPort);
    const mapping: PortMapping = { name: port.name, protocol: port.protocol, guestPort: port.port, hostPort };
    if (options.running) await requestForward(ws.dir, { protocol: qemuProtocol(port.protocol), hostPort, guestPort: port.port });
    out.push(mapping);
    changed.push(`forwarded 127.0.0.1:${hostPort} -> ${port.port} (${port.name})`);
  }
  for (const p of defined) {
    if (matched.has(p)) continue;
    if (options.running) await requestUnforward(ws.dir, { protocol: qemuProtocol(p.protocol), hostPort: p.hostPort, guestPort: p.guestPort });
    changed.push(`removed the forward 127.0.0.1:${p.hostPort} -> ${p.guestPort} (${p.name})`);
  }
  return { ports: [...out, ...adhoc], changed };
}
