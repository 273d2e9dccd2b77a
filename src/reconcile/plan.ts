import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { DefinitionIssue } from '../definition/issues.js';
import type { EnvVar, SnapshotRef, Workspace } from '../definition/model.js';
import { openImageContext } from '../oci/image.js';
import { formatReference } from '../oci/reference.js';
import { findSnapshot } from '../snapshot/catalogue.js';
import type { Env } from '../util/paths.js';
import { appliedState, liveBehind, sameLive } from '../workspace/live.js';
import type { Applied } from '../workspace/steps.js';
import { listWorkspaces, readRecord, readRun, specHash, statusOf, supervisorAlive, type RunRecord, type Status, type WorkspaceImage, type WorkspaceRecord, type WorkspaceRef } from '../workspace/state.js';
import { portsMatch } from '../workspace/update.js';
import { inScope, type DesiredSandbox, type DesiredState } from './desired.js';

/**
 * The plan: desired state (definitions) against last-applied state (each
 * workspace's record) and against what really runs (the boot each
 * supervisor reports, the spec each guest says it runs with). Every change
 * is classified by what applying it takes; the same predicates decide, at
 * apply time and on fresh measurements, whether a step still has to run.
 */

export type Effect =
  /** Applied to the running workspace through its agent; no restart. */
  | 'in-place'
  /** Stop and start; the disk is kept. */
  | 'restart'
  /** The root is swapped for the new base snapshot's; /home survives (a restore point is taken first). */
  | 'refresh-root'
  /** New home or personal snapshot images under the disk's files (only with --refresh-home). */
  | 'rebuild-root'
  /** Not applied to this existing workspace (new workspaces get it). */
  | 'held'
  /** Only recorded: used from the next start or event on. */
  | 'recorded';

export interface FieldChange {
  field: string;
  from?: string;
  to?: string;
  effect: Effect;
  note?: string;
}

export type Action = 'create' | 'update' | 'remove' | 'keep' | 'none' | 'blocked';

/** What one workspace needs, by step, in the order they run. */
export interface Needs {
  record: boolean;
  ports: boolean;
  root?: { base: boolean; home: boolean };
  restart?: string;
  start: boolean;
  live: boolean;
}

export interface WorkspacePlan {
  sandbox: string;
  workspace: string;
  action: Action;
  changes: FieldChange[];
  /** Where the running workspace differs from its record (a restart or live update still to do). */
  pending: string[];
  reason?: string;
  status?: Status;
  /** For the engine. */
  needs?: Needs;
  ref?: WorkspaceRef;
  desired?: Workspace;
}

export interface SandboxPlan {
  sandbox: string;
  file: string;
  action: Action;
  reason?: string;
  workspaces: WorkspacePlan[];
  source?: DesiredSandbox;
}

export interface Plan {
  path: string;
  commit?: string;
  sandboxes: SandboxPlan[];
  issues: DefinitionIssue[];
  /** Whether anything would be done. */
  empty: boolean;
}

export interface PlanOptions {
  prune?: boolean;
  refreshHome?: boolean;
  env?: Env;
}

/** What a workspace is now: its record, its boot, its status, and (running) the spec its guest says it runs with. */
export interface Observed {
  ref: WorkspaceRef;
  record: WorkspaceRecord;
  run?: RunRecord;
  status: Status;
  /** What the guest says it runs with (running workspaces). */
  applied?: Applied;
  /** Its repos' manifests as they are in the guest now (running workspaces). */
  manifests?: Record<string, string>;
}

/** `guest: false` skips asking the guest (workspaces the plan only lists). */
export async function observe(ref: WorkspaceRef, options: { guest?: boolean } = {}): Promise<Observed | undefined> {
  const record = await readRecord(ref.dir);
  if (!record) return undefined;
  const run = await readRun(ref.dir);
  const status = statusOf(record, run);
  const live = status === 'running' && options.guest !== false ? await appliedState(ref, record.spec) : undefined;
  return { ref, record, ...(run ? { run } : {}), status, ...(live?.applied ? { applied: live.applied } : {}), ...(live ? { manifests: live.manifests } : {}) };
}

// ---- images: a snapshot reference and the version it stands for now ----

export interface ImageVersion {
  label: string;
  snapshot?: string;
  reference?: string;
  digest?: string;
}

export async function wantedImage(ref: SnapshotRef | undefined, kind: 'base' | 'home', env?: Env): Promise<ImageVersion | undefined> {
  if (!ref) return undefined;
  if (ref.kind === 'name') {
    const found = await findSnapshot(ref.name, env, [kind]).catch(() => undefined);
    return { label: ref.name, snapshot: ref.name.toLowerCase(), ...(found?.digest ? { digest: found.digest } : {}) };
  }
  const reference = formatReference(ref.reference);
  const context = await openImageContext(env ? { env } : {});
  const digest = ref.reference.digest ?? (await context.store.resolveTag(reference).catch(() => undefined))?.digest;
  return { label: ref.text, reference, ...(digest ? { digest } : {}) };
}

function recordedImage(record: WorkspaceRecord, kind: WorkspaceImage['kind']): ImageVersion | undefined {
  const image = record.images?.find((i) => i.kind === kind);
  if (!image) return undefined;
  return { label: image.snapshot ?? `oci://${image.reference}`, reference: image.reference, ...(image.snapshot ? { snapshot: image.snapshot.toLowerCase() } : {}), ...(image.digest ? { digest: image.digest } : {}) };
}

/** How a wanted image differs from the recorded one: another snapshot, a new version of the same, or not at all. */
export function imageChange(want: ImageVersion | undefined, have: ImageVersion | undefined): 'changed' | 'new-version' | undefined {
  if (!want && !have) return undefined;
  if (!want || !have) return 'changed';
  const same = want.snapshot !== undefined ? have.snapshot === want.snapshot : have.snapshot === undefined && have.reference === want.reference;
  if (!same) return 'changed';
  return want.digest && have.digest && want.digest !== have.digest ? 'new-version' : undefined;
}

function short(digest: string | undefined): string {
  return digest ? digest.replace(/^sha256:/, '').slice(0, 12) : '?';
}

interface Versions {
  base?: ImageVersion;
  home?: ImageVersion;
  personal?: ImageVersion;
}

async function versionsFor(ws: Workspace, record: WorkspaceRecord, env?: Env): Promise<Versions> {
  const base = await wantedImage(ws.baseSnapshot, 'base', env);
  const home = await wantedImage(ws.homeSnapshot, 'home', env);
  const had = recordedImage(record, 'personal');
  const found = had?.snapshot ? await findSnapshot(had.snapshot, env, ['personal']).catch(() => undefined) : undefined;
  const personal = had && found ? { ...had, ...(found.digest ? { digest: found.digest } : {}) } : had;
  return { ...(base ? { base } : {}), ...(home ? { home } : {}), ...(personal ? { personal } : {}) };
}

// ---- spec fields ----

function envMap(vars: readonly EnvVar[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const v of vars) out.set(v.name, v.value);
  return out;
}

/** Field-by-field differences between the last-applied spec and the desired one (snapshots aside: see imageChange). */
export function compareSpecs(old: Workspace, next: Workspace, oldDiskBytes: number): FieldChange[] {
  const out: FieldChange[] = [];
  const text = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));
  if (old.description !== next.description) out.push({ field: 'description', from: old.description, to: next.description, effect: 'recorded' });

  const a = envMap(old.env);
  const b = envMap(next.env);
  for (const [name, value] of b) {
    if (a.get(name) !== value) out.push({ field: `env.${name}`, ...(a.has(name) ? { from: a.get(name) as string } : {}), to: value, effect: 'in-place' });
  }
  for (const [name, value] of a) if (!b.has(name)) out.push({ field: `env.${name}`, from: value, effect: 'in-place' });

  const byKey = <T>(field: string, before: readonly T[], after: readonly T[], key: (item: T) => string, removed: Effect = 'in-place', changed: Effect = 'in-place', notes: { removed?: string; changed?: string } = {}): void => {
    const m = new Map(before.map((i) => [key(i), i] as const));
    const n = new Map(after.map((i) => [key(i), i] as const));
    for (const [k, item] of n) {
      const was = m.get(k);
      if (!was) out.push({ field: `${field}[${k}]`, to: text(item), effect: 'in-place' });
      else if (JSON.stringify(was) !== JSON.stringify(item)) out.push({ field: `${field}[${k}]`, from: text(was), to: text(item), effect: changed, ...(notes.changed ? { note: notes.changed } : {}) });
    }
    for (const [k, item] of m) if (!n.has(k)) out.push({ field: `${field}[${k}]`, from: text(item), effect: removed, ...(notes.removed ? { note: notes.removed } : {}) });
  };
  byKey('system.files', old.system.files, next.system.files, (f) => f.path, 'in-place', 'in-place', { removed: 'removed from the workspace unless changed there' });
  byKey('system.daemons', old.system.daemons, next.system.daemons, (d) => d.name);
  byKey('ports', old.ports, next.ports, (p) => p.name);
  byKey('port_forward_rules', old.portForwardRules, next.portForwardRules, (r) => String(r.local.port));
  byKey('checkouts', old.checkouts, next.checkouts, (c) => c.path, 'recorded', 'recorded', { removed: 'its folder stays in the workspace', changed: 'the existing folder is kept as it is' });
  if (JSON.stringify(old.probes) !== JSON.stringify(next.probes)) out.push({ field: 'probes.readiness', from: text(old.probes.readiness), to: text(next.probes.readiness), effect: 'in-place' });
  for (const hook of ['onCreate', 'onSuspend', 'onResume', 'onDelete'] as const) {
    if (JSON.stringify(old.lifecycle[hook]) !== JSON.stringify(next.lifecycle[hook])) {
      const name = hook.replace(/[A-Z]/, (c) => `_${c.toLowerCase()}`);
      out.push({ field: `lifecycle.${name}`, ...(old.lifecycle[hook] ? { from: old.lifecycle[hook].run.cmd } : {}), ...(next.lifecycle[hook] ? { to: next.lifecycle[hook].run.cmd } : {}), effect: 'recorded', note: 'used from the next time it runs' });
    }
  }
  if (JSON.stringify(old.waitFor) !== JSON.stringify(next.waitFor)) out.push({ field: 'wait_for', from: old.waitFor.join(', '), to: next.waitFor.join(', '), effect: 'recorded', note: 'used from the next start' });
  if (old.resources.cpus !== next.resources.cpus) out.push({ field: 'resources.cpus', from: String(old.resources.cpus), to: String(next.resources.cpus), effect: 'restart' });
  if (old.resources.memoryMiB !== next.resources.memoryMiB) out.push({ field: 'resources.memory', from: `${old.resources.memoryMiB} MiB`, to: `${next.resources.memoryMiB} MiB`, effect: 'restart' });
  if (JSON.stringify(old.kernel) !== JSON.stringify(next.kernel)) out.push({ field: 'kernel', from: old.kernel.kind === 'oci' ? old.kernel.text : 'default', to: next.kernel.kind === 'oci' ? next.kernel.text : 'default', effect: 'restart' });
  if (oldDiskBytes !== next.resources.diskBytes) {
    out.push({ field: 'resources.disk', from: String(oldDiskBytes), to: String(next.resources.diskBytes), effect: 'held', note: 'a disk is not resized under its files; new workspaces get the new size' });
  }
  return out;
}

/** The spec as a record keeps it: the disk size stays what the disk is. */
export function recordedSpec(ws: Workspace, record: WorkspaceRecord): Workspace {
  return { ...ws, resources: { ...ws.resources, diskBytes: record.spec.resources.diskBytes } };
}

// ---- predicates shared by the plan and the engine ----

export function needsRecord(ws: Workspace, source: DesiredSandbox, commit: string | undefined, record: WorkspaceRecord): boolean {
  if (JSON.stringify(record.spec) !== JSON.stringify(recordedSpec(ws, record))) return true;
  const applied = record.applied;
  return !applied || applied.sha256 !== source.sha256 || applied.file !== source.file || applied.commit !== commit;
}

export function rootNeeds(versions: Versions, record: WorkspaceRecord, refreshHome: boolean): { base: boolean; home: boolean; held: FieldChange[]; changes: FieldChange[] } {
  const changes: FieldChange[] = [];
  const held: FieldChange[] = [];
  const baseHave = recordedImage(record, 'base');
  const base = imageChange(versions.base, baseHave);
  if (base) {
    changes.push({
      field: 'base_snapshot',
      ...(baseHave ? { from: base === 'new-version' ? `${baseHave.label}@${short(baseHave.digest)}` : baseHave.label } : {}),
      ...(versions.base ? { to: base === 'new-version' ? `${versions.base.label}@${short(versions.base.digest)} (new version)` : versions.base.label } : {}),
      effect: 'refresh-root',
    });
  }
  let home = false;
  const homeHave = recordedImage(record, 'home');
  const homeChange = imageChange(versions.home, homeHave);
  const personalHave = recordedImage(record, 'personal');
  const personalChange = imageChange(versions.personal, personalHave);
  for (const [field, change, have, want] of [
    ['home_snapshot', homeChange, homeHave, versions.home],
    ['personal snapshot', personalChange, personalHave, versions.personal],
  ] as const) {
    if (!change) continue;
    const entry: FieldChange = {
      field,
      ...(have ? { from: change === 'new-version' ? `${have.label}@${short(have.digest)}` : have.label } : {}),
      ...(want ? { to: change === 'new-version' ? `${want.label}@${short(want.digest)} (new version)` : want.label } : {}),
      effect: refreshHome ? 'rebuild-root' : 'held',
      ...(refreshHome ? {} : { note: 'a home is its user\'s: applied to an existing workspace only with --refresh-home' }),
    };
    (refreshHome ? changes : held).push(entry);
    if (refreshHome) home = true;
  }
  const baseChange = changes.find((c) => c.field === 'base_snapshot');
  if (baseChange && held.some((h) => h.to?.endsWith('(new version)'))) {
    baseChange.note = 'the held snapshots come along at their new versions (a store keeps one version per tag)';
  }
  return { base: base !== undefined, home, held, changes };
}

/** Why a running workspace must restart to match its record, if it must. */
export function restartReason(o: Observed): string | undefined {
  const boot = o.run?.boot;
  if (!boot || !o.run || !supervisorAlive(o.run) || o.record.desired !== 'running') return undefined;
  const r = o.record;
  if (o.status === 'failed' && boot.spec !== specHash(r.spec)) return 'its start-up failed with the previous definition';
  if (boot.cpus !== r.cpus) return `it runs with ${boot.cpus} cpu, the record says ${r.cpus}`;
  if (boot.memoryMiB !== r.memoryMiB) return `it runs with ${boot.memoryMiB} MiB, the record says ${r.memoryMiB} MiB`;
  if (boot.kernel !== (r.kernel.boot ?? r.kernel.vmlinuz)) return 'it runs another kernel than the record says';
  if (boot.rootGeneration !== (r.rootGeneration ?? 0) || JSON.stringify(boot.lowers) !== JSON.stringify(r.lowers)) return 'it runs on another root than the record says';
  return undefined;
}

/** A workspace that should run and does not (stopped midway by an interrupted apply, or crashed): it is started. */
export function needsStart(o: Observed): boolean {
  return o.record.desired === 'running' && !(o.run && supervisorAlive(o.run));
}

/** Whether a running guest still has to be brought to its record's spec. */
export function needsLive(o: Observed): boolean {
  if (o.record.desired !== 'running') return false;
  if (o.status === 'running') return liveBehind(o.applied, o.record.spec, o.manifests);
  // Still starting: its start-up applies the spec it was started with; anything newer waits for it.
  if (o.status === 'starting') return o.run?.boot?.spec !== undefined && o.run.boot.spec !== specHash(o.record.spec);
  return false;
}

// ---- the plan ----

async function planWorkspace(source: DesiredSandbox, ws: Workspace, o: Observed, desired: DesiredState, options: PlanOptions): Promise<WorkspacePlan> {
  const record = o.record;
  const versions = await versionsFor(ws, record, options.env);
  const root = rootNeeds(versions, record, options.refreshHome ?? false);
  const changes = [...root.changes, ...compareSpecs(record.spec, ws, record.diskBytes), ...root.held];
  const recordNeeded = needsRecord(ws, source, desired.commit, record);
  // What the engine would find after the record step: the record with the new spec.
  const after: Observed = recordNeeded ? { ...o, record: { ...record, spec: recordedSpec(ws, record), cpus: ws.resources.cpus, memoryMiB: ws.resources.memoryMiB } } : o;
  const pending: string[] = [];
  const restart = restartReason(o);
  if (restart) pending.push(`restart: ${restart}`);
  if (!recordNeeded && needsLive(o)) {
    const why = !o.applied || !sameLive(o.applied.spec, record.spec)
      ? 'the running workspace has not taken its current definition yet'
      : o.applied.ready === false
        ? 'its readiness probes have not passed since its last live update'
        : 'a repo manifest was edited in the workspace: its daemons are applied again';
    pending.push(why);
  }
  if (!portsMatch(record, record.spec)) pending.push('port forwards differ from the record');
  if (needsStart(o)) pending.push(`start: it should run and is ${o.status}`);
  const failedStart = o.status === 'failed' ? `its start-up failed: ${o.run?.error ?? 'see cs log'}` : undefined;
  if (failedStart && !restart) pending.push(`${failedStart} (it is started again when its definition changes; see \`cs log\`)`);
  const needs: Needs = {
    record: recordNeeded,
    ports: !portsMatch(after.record, after.record.spec) || (recordNeeded && !portsMatch(record, recordedSpec(ws, record))),
    ...(root.base || root.home ? { root: { base: root.base, home: root.home } } : {}),
    ...(restart || (o.status !== 'suspended' && changes.some((c) => c.effect === 'restart') && record.desired === 'running') ? { restart: restart ?? 'resources or kernel changed' } : {}),
    start: needsStart(o),
    live: needsLive(after) || (recordNeeded && changes.some((c) => c.effect === 'in-place') && (o.status === 'running' || o.status === 'starting')),
  };
  const any = needs.record || needs.ports || needs.root !== undefined || needs.restart !== undefined || needs.start || needs.live;
  return {
    sandbox: record.sandbox,
    workspace: record.name,
    action: any ? 'update' : 'none',
    changes,
    pending,
    status: o.status,
    needs,
    ref: o.ref,
    desired: ws,
    ...(failedStart ? { reason: failedStart } : {}),
  };
}

export async function buildPlan(desired: DesiredState, options: PlanOptions = {}): Promise<Plan> {
  const bySandbox = new Map<string, Observed[]>();
  for (const ref of await listWorkspaces(options.env)) {
    // Only workspaces a definition names are asked what they run with.
    const o = await observe(ref, { guest: desired.sandboxes.has(ref.sandbox) });
    if (o) bySandbox.set(ref.sandbox, [...(bySandbox.get(ref.sandbox) ?? []), o]);
  }
  // Nothing is removed while any definition has a problem: a file cut short, renamed or broken must not read as "gone".
  const mayRemove = options.prune === true && desired.issues.length === 0;
  const held = 'not removed while the definitions have problems (see below)';
  const sandboxes: SandboxPlan[] = [];
  for (const source of [...desired.sandboxes.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const existing = bySandbox.get(source.name);
    bySandbox.delete(source.name);
    if (!existing) {
      sandboxes.push({
        sandbox: source.name,
        file: source.file,
        action: 'create',
        source,
        workspaces: source.model.workspaces.map((ws) => ({ sandbox: source.name, workspace: ws.name, action: 'create', changes: [], pending: [], desired: ws })),
      });
      continue;
    }
    if (existing.some((o) => o.record.standalone)) {
      sandboxes.push({ sandbox: source.name, file: source.file, action: 'blocked', reason: `"${source.name}" is a workspace made with \`cs workspace create\`, not from a definition; rename the sandbox or remove that workspace`, workspaces: [] });
      continue;
    }
    const workspaces: WorkspacePlan[] = [];
    for (const ws of source.model.workspaces) {
      const o = existing.find((e) => e.record.name === ws.name);
      workspaces.push(o ? await planWorkspace(source, ws, o, desired, options) : { sandbox: source.name, workspace: ws.name, action: 'create', changes: [], pending: [], desired: ws });
    }
    for (const o of existing) {
      if (source.model.workspaces.some((ws) => ws.name === o.record.name)) continue;
      const reason = mayRemove ? 'no longer in its definition' : `no longer in its definition; kept (${options.prune ? held : 'use --prune to remove it'})`;
      workspaces.push({ sandbox: source.name, workspace: o.record.name, action: mayRemove ? 'remove' : 'keep', changes: [], pending: [], status: o.status, ref: o.ref, reason });
    }
    const action: Action = workspaces.some((w) => w.action !== 'none' && w.action !== 'keep') ? 'update' : workspaces.some((w) => w.action === 'keep') ? 'keep' : 'none';
    sandboxes.push({ sandbox: source.name, file: source.file, action, source, workspaces });
  }
  // Sandboxes no definition names any more. Only those `cs apply` made or adopted are judged, by the
  // file they were last applied from: gone from disk, or read and naming another sandbox now. A file in
  // scope that was not read (a hidden folder, another extension) says nothing, so nothing happens.
  for (const [name, observed] of [...bySandbox.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    const applied = observed.find((o) => o.record.applied)?.record.applied;
    if (!applied || observed.some((o) => o.record.standalone) || !inScope(desired, applied.file)) continue;
    const issues = desired.invalid.get(resolve(applied.file));
    const listed = (action: Action, reason: string): SandboxPlan => ({
      sandbox: name,
      file: applied.file,
      action,
      reason,
      workspaces: observed.map((o) => ({ sandbox: name, workspace: o.record.name, action, changes: [], pending: [], status: o.status, ref: o.ref, reason })),
    });
    if (issues) {
      const first = issues[0];
      sandboxes.push(listed('blocked', `its definition is invalid, so its last good spec stays applied: ${first ? `${first.file}:${first.line}:${first.column} ${first.message}` : 'see cs validate'}`));
      continue;
    }
    const gone = !existsSync(applied.file);
    if (!gone && !desired.files.has(resolve(applied.file))) continue;
    const why = gone ? `its definition ${applied.file} is gone` : `${applied.file} defines another sandbox now`;
    sandboxes.push(mayRemove ? listed('remove', why) : listed('keep', `${why}; kept (${options.prune ? held : 'use --prune to remove it'})`));
  }
  const empty = sandboxes.every((s) => s.action === 'none' || s.action === 'keep' || s.action === 'blocked');
  return { path: desired.path, ...(desired.commit ? { commit: desired.commit } : {}), sandboxes, issues: desired.issues, empty };
}

export type { Versions };
export { versionsFor };
