import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CsError } from '../util/errors.js';
import { acquireLock, LockedError, type Lock } from '../util/lock.js';
import { dataDir, type Env } from '../util/paths.js';
import { addWorkspace, createFromModel } from '../workspace/create.js';
import { discardFolder, launchWorkspace, removeSandbox, restartWorkspace, retireWorkspace, waitUntil } from '../workspace/lifecycle.js';
import { liveUpdate } from '../workspace/live.js';
import { FILES, sandboxesDir, supervisorAlive, type AppliedSource, type WorkspaceRef } from '../workspace/state.js';
import { portsMatch, rebuildRoot, recordSpec, updatePorts } from '../workspace/update.js';
import { readDesired, type DesiredSandbox, type DesiredState } from './desired.js';
import { buildPlan, needsLive, needsRecord, needsStart, observe, restartReason, rootNeeds, versionsFor, type Observed, type Plan, type PlanOptions, type WorkspacePlan } from './plan.js';
import { writeSync } from './status.js';

/**
 * The reconciler, in the style Flintlock showed: every step measures before
 * acting (should-do), acts (do) and checks that the change took (verify).
 * The plan is rebuilt from fresh measurements after each round until it is
 * empty, with a cap on rounds. A failing workspace is retried with growing
 * back-off and ends `failed` after a few tries; the others go on.
 */

export interface ApplyOptions extends PlanOptions {
  /** A definition file or folder. */
  path: string;
  /** The git commit the files are at (cs reconcile --git). */
  commit?: string;
  dryRun?: boolean;
  maxRounds?: number;
  maxAttempts?: number;
  /** The first retry's delay; each next one doubles it. */
  backoffMs?: number;
  /** Workspaces worked on at once. */
  concurrency?: number;
  onEvent?: (event: ApplyEvent) => void;
  /** The caller holds the reconcile lock already (the watch and git loops). */
  locked?: boolean;
  /**
   * Removals wait until they have been planned for this long (the watch
   * loop: a file read while an editor was writing it must not read as
   * gone), remembered across applies in `seenRemovals`.
   */
  removalGraceMs?: number;
  seenRemovals?: Map<string, number>;
}

export interface ApplyEvent {
  target: string;
  step: string;
  phase: 'start' | 'done' | 'retry' | 'failed' | 'progress';
  message?: string;
}

export interface ApplyResult {
  /** The plan as it was before anything was done. */
  plan: Plan;
  done: { target: string; step: string; detail: string[] }[];
  failed: { target: string; reason: string }[];
  rounds: number;
  /** Nothing was left to do at the end (failed workspaces aside). */
  converged: boolean;
  /** Removals waiting for their grace time (see removalGraceMs). */
  deferred: string[];
}

interface Step {
  name: string;
  shouldDo(): Promise<boolean>;
  do(): Promise<string[]>;
  /** Why the change is not in effect, or undefined when it is. */
  verify(): Promise<string | undefined>;
}

interface Unit {
  target: string;
  kind: 'create' | 'remove' | 'update';
  /** Folders of existing workspaces, for their status files. */
  dirs: string[];
  steps: Step[];
  held: string[];
}

export function reconcileLockPath(env?: Env): string {
  return join(dataDir(env), 'reconcile.lock');
}

/** One reconciler per data directory: `cs apply`, `cs reconcile` and the service share this lock. */
export async function lockReconciler(env: Env | undefined, purpose: string): Promise<Lock> {
  try {
    return await acquireLock(reconcileLockPath(env), { purpose, timeoutMs: 0 });
  } catch (error) {
    if (!(error instanceof LockedError)) throw error;
    const h = error.holder;
    throw new CsError(`another reconciler is running${h ? `: process ${h.pid} (${h.purpose}, since ${h.since})` : ''}; there is one per data directory`, {
      code: 'RECONCILER_RUNNING',
      exitCode: 3,
      suggestions: ['wait for it to finish, or stop it (a `cs reconcile --watch` or `--git` runs until stopped)'],
    });
  }
}

export async function applyDefinitions(options: ApplyOptions): Promise<ApplyResult> {
  const desired = await readDesired(options.path, options.commit ? { commit: options.commit } : {});
  return applyDesired(desired, options);
}

export async function applyDesired(desired: DesiredState, options: ApplyOptions): Promise<ApplyResult> {
  const first = await buildPlan(desired, options);
  if (options.dryRun) return { plan: first, done: [], failed: [], rounds: 0, converged: first.empty, deferred: [] };
  const lock = options.locked ? undefined : await lockReconciler(options.env, `cs apply -f ${options.path}`);
  try {
    return await converge(desired, first, options);
  } finally {
    await lock?.release();
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function converge(desired: DesiredState, first: Plan, options: ApplyOptions): Promise<ApplyResult> {
  const maxRounds = options.maxRounds ?? 12;
  const maxAttempts = options.maxAttempts ?? 4;
  const backoff = options.backoffMs ?? 1000;
  const emit = options.onEvent ?? (() => undefined);
  const attempts = new Map<string, number>();
  const nextTry = new Map<string, number>();
  const failed = new Map<string, string>();
  const done: ApplyResult['done'] = [];
  const seen = options.seenRemovals ?? new Map<string, number>();
  let deferred: string[] = [];
  let plan = first;
  let rounds = 0;
  let converged = false;

  const runUnit = async (unit: Unit): Promise<void> => {
    const tries = (attempts.get(unit.target) ?? 0) + 1;
    for (const dir of unit.dirs) await writeSync(dir, { state: 'applying', attempts: tries, ...(unit.held.length ? { held: unit.held } : {}) });
    try {
      for (const step of unit.steps) {
        if (!(await step.shouldDo())) continue;
        emit({ target: unit.target, step: step.name, phase: 'start' });
        const detail = await step.do();
        const why = await step.verify();
        if (why) throw new Error(`${step.name}: ${why}`);
        done.push({ target: unit.target, step: step.name, detail });
        emit({ target: unit.target, step: step.name, phase: 'done', ...(detail.length ? { message: detail.join('; ') } : {}) });
      }
      attempts.delete(unit.target);
      nextTry.delete(unit.target);
    } catch (error) {
      const reason = (error as Error).message.split('\n')[0] ?? 'unknown error';
      attempts.set(unit.target, tries);
      if (tries >= maxAttempts) {
        failed.set(unit.target, reason);
        for (const dir of unit.dirs) await writeSync(dir, { state: 'failed', attempts: tries, reason });
        emit({ target: unit.target, step: 'apply', phase: 'failed', message: `${reason} (gave up after ${tries} tries)` });
      } else {
        const delay = backoff * 2 ** (tries - 1);
        nextTry.set(unit.target, Date.now() + delay);
        for (const dir of unit.dirs) await writeSync(dir, { state: 'retrying', attempts: tries, reason });
        emit({ target: unit.target, step: 'apply', phase: 'retry', message: `${reason}; trying again in ${(delay / 1000).toFixed(1)} s` });
      }
    }
  };

  /** This round's units: failed ones left out, removals still in their grace time set aside. */
  const work = (p: Plan): Unit[] => {
    const now = Date.now();
    const units = unitsOf(p, desired, options).filter((u) => !failed.has(u.target));
    const removals = new Set(units.filter((u) => u.kind === 'remove').map((u) => u.target));
    for (const target of [...seen.keys()]) if (!removals.has(target)) seen.delete(target);
    deferred = [];
    return units.filter((u) => {
      if (u.kind !== 'remove' || !options.removalGraceMs) return true;
      const since = seen.get(u.target) ?? now;
      seen.set(u.target, since);
      if (now - since >= options.removalGraceMs) return true;
      deferred.push(u.target);
      return false;
    });
  };

  while (rounds < maxRounds) {
    if (rounds > 0) plan = await buildPlan(desired, options);
    const units = work(plan);
    if (units.length === 0) {
      converged = true;
      break;
    }
    const now = Date.now();
    const ready = units.filter((u) => (nextTry.get(u.target) ?? 0) <= now);
    if (ready.length === 0) {
      // Waiting out a back-off is not a round.
      await sleep(Math.max(10, Math.min(...units.map((u) => nextTry.get(u.target) ?? now)) - now));
      continue;
    }
    rounds++;
    // New sandboxes and workspaces first, one at a time: each picks free host ports, and a relay
    // (port_forward_rules) of a changed workspace may point at one of them.
    for (const unit of ready.filter((u) => u.kind === 'create')) await runUnit(unit);
    await eachLimited(ready.filter((u) => u.kind !== 'create'), options.concurrency ?? 2, runUnit);
  }
  if (!converged) {
    for (const unit of work(plan)) {
      if (failed.has(unit.target)) continue;
      const reason = `still not matching its definition after ${maxRounds} rounds`;
      failed.set(unit.target, reason);
      for (const dir of unit.dirs) await writeSync(dir, { state: 'failed', attempts: attempts.get(unit.target) ?? 0, reason });
    }
  }
  // What matches now says so; a definition that did not validate, or a start-up that failed, leaves the workspace failed, with why.
  const final = rounds > 0 ? await buildPlan(desired, options) : plan;
  for (const sandbox of final.sandboxes) {
    for (const w of sandbox.workspaces) {
      if (!w.ref || failed.has(`${w.sandbox}/${w.workspace}`) || failed.has(w.sandbox)) continue;
      if (w.action === 'blocked' || (w.action === 'none' && w.status === 'failed')) await writeSync(w.ref.dir, { state: 'failed', attempts: 0, reason: w.reason ?? 'blocked' });
      else if (w.action === 'none') await writeSync(w.ref.dir, { state: 'synced', attempts: 0, ...heldOf(w) });
    }
  }
  return { plan: first, done, failed: [...failed].map(([target, reason]) => ({ target, reason })), rounds, converged, deferred };
}

function heldOf(w: WorkspacePlan): { held?: string[] } {
  const held = w.changes.filter((c) => c.effect === 'held').map((c) => c.field);
  return held.length ? { held } : {};
}

async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++] as T);
  });
  await Promise.all(workers);
}

function appliedOf(source: DesiredSandbox, desired: DesiredState): AppliedSource {
  return { file: source.file, sha256: source.sha256, ...(desired.commit ? { commit: desired.commit } : {}), at: new Date().toISOString() };
}

function unitsOf(plan: Plan, desired: DesiredState, options: ApplyOptions): Unit[] {
  const units: Unit[] = [];
  const envOpt = options.env ? { env: options.env } : {};
  const progress = (target: string, step: string) => (phase: string) => options.onEvent?.({ target, step, phase: 'progress', message: phase });
  for (const sandbox of plan.sandboxes) {
    const source = sandbox.source;
    if (sandbox.action === 'create' && source) {
      const root = join(sandboxesDir(options.env), sandbox.sandbox);
      units.push({
        target: sandbox.sandbox,
        kind: 'create',
        dirs: [],
        held: [],
        steps: [
          {
            name: 'create sandbox',
            shouldDo: async () => (await observeSandbox(root)) === false,
            do: async () => {
              await createFromModel(source.model, { file: source.file, applied: appliedOf(source, desired), start: true, wait: true, ...envOpt, onPhase: progress(sandbox.sandbox, 'create') });
              return [`created ${source.model.workspaces.map((w) => w.name).join(', ')}`];
            },
            verify: async () => ((await observeSandbox(root)) ? undefined : 'the sandbox is not there'),
          },
        ],
      });
      continue;
    }
    if (sandbox.action === 'remove') {
      units.push({
        target: sandbox.sandbox,
        kind: 'remove',
        dirs: [],
        held: [],
        steps: [
          {
            name: 'remove sandbox',
            shouldDo: async () => observeSandbox(join(sandboxesDir(options.env), sandbox.sandbox)),
            do: async () => {
              const removed = await removeSandbox({ name: sandbox.sandbox, ...envOpt });
              return [`removed ${removed.removed.join(', ')}`];
            },
            verify: async () => ((await observeSandbox(join(sandboxesDir(options.env), sandbox.sandbox))) ? 'the sandbox is still there' : undefined),
          },
        ],
      });
      continue;
    }
    for (const w of sandbox.workspaces) {
      const target = `${w.sandbox}/${w.workspace}`;
      if (w.action === 'create' && source && w.desired) {
        const ws = w.desired;
        const dir = join(sandboxesDir(options.env), w.sandbox, w.workspace);
        units.push({
          target,
          kind: 'create',
          dirs: [],
          held: [],
          steps: [
            {
              name: 'create workspace',
              shouldDo: async () => (await observe({ sandbox: w.sandbox, workspace: w.workspace, dir })) === undefined,
              do: async () => {
                await addWorkspace({ sandbox: w.sandbox, ws, file: source.file, start: true, wait: true, applied: appliedOf(source, desired), ...envOpt, onPhase: progress(target, 'create') });
                return ['created'];
              },
              verify: async () => ((await observe({ sandbox: w.sandbox, workspace: w.workspace, dir })) ? undefined : 'the workspace is not there'),
            },
          ],
        });
      } else if (w.action === 'remove' && w.ref) {
        const ref = w.ref;
        units.push({
          target,
          kind: 'remove',
          dirs: [],
          held: [],
          steps: [
            {
              name: 'remove workspace',
              shouldDo: async () => (await observe(ref)) !== undefined,
              do: async () => {
                await retireWorkspace(ref, envOpt);
                await discardFolder(ref.dir, `${w.sandbox}-${w.workspace}`, options.env);
                return ['removed'];
              },
              verify: async () => ((await observe(ref)) ? 'the workspace is still there' : undefined),
            },
          ],
        });
      } else if (w.action === 'update' && w.ref && w.desired && source) {
        units.push({ target, kind: 'update', dirs: [w.ref.dir], held: heldOf(w).held ?? [], steps: updateSteps(w.ref, w.desired, source, desired, options) });
      }
    }
  }
  return units;
}

/** Whether a sandbox has any workspace (a folder a crash left without records does not count: creating it clears it). */
async function observeSandbox(root: string): Promise<boolean> {
  const names = await readdir(root).catch(() => [] as string[]);
  return names.some((name) => !name.startsWith('.') && existsSync(join(root, name, FILES.record)));
}

/** The steps that bring one existing workspace to its definition, each measuring afresh. */
function updateSteps(ref: WorkspaceRef, ws: WorkspacePlan['desired'] & object, source: DesiredSandbox, desired: DesiredState, options: ApplyOptions): Step[] {
  const envOpt = options.env ? { env: options.env } : {};
  const refreshHome = options.refreshHome ?? false;
  const fresh = async (): Promise<Observed> => {
    const o = await observe(ref);
    if (!o) throw new Error('the workspace is gone');
    return o;
  };
  const rootFor = async (o: Observed) => rootNeeds(await versionsFor(ws, o.record, options.env), o.record, refreshHome);
  // A VM started by an older cs does not say what it booted with: it is restarted when this apply changed what a boot takes.
  let restartWanted = false;
  const bootUnknown = (o: Observed): boolean => restartWanted && o.run !== undefined && !o.run.boot && supervisorAlive(o.run) && o.record.desired === 'running';
  return [
    {
      name: 'record',
      shouldDo: async () => needsRecord(ws, source, desired.commit, (await fresh()).record),
      do: async () => {
        const before = (await fresh()).record;
        await recordSpec(ref, ws, appliedOf(source, desired), envOpt);
        restartWanted ||= before.cpus !== ws.resources.cpus || before.memoryMiB !== ws.resources.memoryMiB || JSON.stringify(before.spec.kernel) !== JSON.stringify(ws.kernel);
        return [];
      },
      verify: async () => (needsRecord(ws, source, desired.commit, (await fresh()).record) ? 'the record does not hold the new spec' : undefined),
    },
    {
      name: 'ports',
      shouldDo: async () => {
        const o = await fresh();
        return !portsMatch(o.record, o.record.spec);
      },
      do: async () => updatePorts(ref, (await fresh()).record.spec, envOpt),
      verify: async () => {
        const o = await fresh();
        return portsMatch(o.record, o.record.spec) ? undefined : 'the port forwards differ from the definition';
      },
    },
    {
      name: 'root',
      shouldDo: async () => {
        const need = await rootFor(await fresh());
        return need.base || need.home;
      },
      do: async () => {
        const need = await rootFor(await fresh());
        const result = await rebuildRoot(ref, ws, { base: need.base, home: need.home, wait: true, ...envOpt, onPhase: (p) => options.onEvent?.({ target: `${ref.sandbox}/${ref.workspace}`, step: 'root', phase: 'progress', message: p }) });
        return [need.base ? 'root refreshed from the new base snapshot; /home kept' : 'root rebuilt with the new home snapshot', ...(result.restorePoint ? [`restore point ${result.restorePoint} holds the disk as it was`] : [])];
      },
      verify: async () => {
        const need = await rootFor(await fresh());
        return need.base || need.home ? 'the root images are not the definition\'s' : undefined;
      },
    },
    {
      name: 'restart',
      shouldDo: async () => {
        const o = await fresh();
        return restartReason(o) !== undefined || bootUnknown(o);
      },
      do: async () => {
        const why = restartReason(await fresh()) ?? 'its resources or kernel changed';
        await restartWorkspace(ref, { ...envOpt, wait: true });
        restartWanted = false;
        return [`restarted (${why})`];
      },
      verify: async () => restartReason(await fresh()),
    },
    {
      name: 'start',
      shouldDo: async () => needsStart(await fresh()),
      do: async () => {
        const o = await fresh();
        await launchWorkspace(ref, envOpt);
        await waitUntil(ref.dir, 'ready', envOpt);
        return [`started (it was ${o.status})`];
      },
      verify: async () => (needsStart(await fresh()) ? 'it did not start' : undefined),
    },
    {
      name: 'live update',
      shouldDo: async () => needsLive(await fresh()),
      do: async () => {
        if ((await fresh()).status === 'starting') await waitUntil(ref.dir, 'ready', { ...envOpt, waitTimeoutMs: 10 * 60_000 });
        const changed = await liveUpdate(ref);
        return changed.length ? changed : ['environment updated'];
      },
      verify: async () => (needsLive(await fresh()) ? 'the running workspace does not report the new spec' : undefined),
    },
  ];
}
