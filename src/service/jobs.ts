import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError, UsageError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { acquireLock, withLock, type Lock } from '../util/lock.js';
import type { Env } from '../util/paths.js';
import { keyActive, serviceDir, type Principal } from './keys.js';
import { Captured, checkCommand, checkTimeout, checkWhere, execIn, inTarget } from './run.js';

/**
 * Jobs of `cs serve`: commands queued to run now or at `run_at`, in one
 * workspace (`sandbox.exec`) or as a pipeline of steps on one workspace
 * (`pipeline.run`, stopping at the first failing step). Each job is a file
 * in the data directory, rewritten whole (atomically) at every change. A
 * job is marked running before it starts, so a service that stops while it
 * runs finds it `interrupted` on its next start and never runs it again;
 * queued jobs are taken up again. An idempotency key names a job per owner:
 * the same key (even in concurrent requests) gets the same job back.
 */

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'interrupted';

export interface StepInput {
  command: string | string[];
  timeout_ms?: number;
}

export interface JobInput {
  workspace?: string;
  ephemeral?: boolean;
  image?: string;
  cwd?: string;
  env?: Record<string, string>;
  /** sandbox.exec: one command. */
  command?: string | string[];
  timeout_ms?: number;
  /** pipeline.run: steps in order. */
  steps?: StepInput[];
}

export interface StepResult {
  command: string | string[];
  state: 'pending' | 'running' | 'succeeded' | 'failed' | 'skipped' | 'interrupted';
  exit_code?: number;
  timed_out?: boolean;
  stdout?: string;
  stderr?: string;
  stdout_truncated?: boolean;
  stderr_truncated?: boolean;
  started_at?: string;
  ended_at?: string;
}

export interface Job {
  id: string;
  owner: string;
  kind: 'sandbox.exec' | 'pipeline.run';
  state: JobState;
  input: JobInput;
  created_at: string;
  run_at?: string;
  started_at?: string;
  ended_at?: string;
  idempotency_key?: string;
  /** The key it was queued with: a job whose key is revoked before it runs does not run. */
  key_id?: string;
  workspace?: string;
  steps: StepResult[];
  error?: string;
}

const STEP = {
  type: 'object',
  required: ['command'],
  properties: { command: { oneOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }] }, timeout_ms: { type: 'integer', minimum: 1 } },
};
const WHERE = {
  workspace: { type: 'string', description: 'One of your workspaces' },
  ephemeral: { type: 'boolean', description: 'Run in a fresh workspace from `image`, removed afterwards' },
  image: { type: 'string' },
  cwd: { type: 'string' },
  env: { type: 'object', additionalProperties: { type: 'string' } },
};

/** The kinds and their input schemas (GET /v1/jobs/kinds). */
export const JOB_KINDS = {
  'sandbox.exec': { description: 'Run one command in a workspace (or an ephemeral one).', input: { type: 'object', required: ['command'], properties: { ...WHERE, command: STEP.properties.command, timeout_ms: STEP.properties.timeout_ms } } },
  'pipeline.run': { description: 'Run steps in order on one workspace, stopping at the first that fails.', input: { type: 'object', required: ['steps'], properties: { ...WHERE, steps: { type: 'array', minItems: 1, maxItems: 100, items: STEP } } } },
} as const;

const jobsDir = (env?: Env): string => join(serviceDir(env), 'jobs');
/** One small file per queued job (its run_at): the runner lists these, not every job ever run. */
const queueDir = (env?: Env): string => join(jobsDir(env), 'queue');

async function enqueue(job: Job, env?: Env): Promise<void> {
  await writeFileAtomic(join(queueDir(env), job.id), job.run_at ?? '', { mode: 0o600 });
}

async function dequeue(id: string, env?: Env): Promise<void> {
  await rm(join(queueDir(env), id), { force: true });
}

async function writeJob(job: Job, env?: Env): Promise<void> {
  await writeFileAtomic(join(jobsDir(env), `${job.id}.json`), JSON.stringify(job, null, 2) + '\n', { mode: 0o600 });
}

export async function readJob(id: string, env?: Env): Promise<Job | undefined> {
  if (!/^[0-9a-f]{16}$/.test(id)) return undefined;
  try {
    return JSON.parse(await readFile(join(jobsDir(env), `${id}.json`), 'utf8')) as Job;
  } catch {
    return undefined;
  }
}

export async function listJobs(env?: Env): Promise<Job[]> {
  const names = await readdir(jobsDir(env)).catch(() => [] as string[]);
  const jobs: Job[] = [];
  for (const name of names) {
    const m = /^([0-9a-f]{16})\.json$/.exec(name);
    const job = m ? await readJob(m[1] as string, env) : undefined;
    if (job) jobs.push(job);
  }
  return jobs.sort((a, b) => a.created_at.localeCompare(b.created_at));
}

/** A request body to a job, checked field by field. */
export function checkJobRequest(body: unknown): { kind: Job['kind']; input: JobInput; runAt?: Date; idempotencyKey?: string } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new UsageError('the body must be a JSON object');
  const b = body as Record<string, unknown>;
  const kind = b['kind'];
  if (kind !== 'sandbox.exec' && kind !== 'pipeline.run') throw new UsageError(`"kind" must be one of ${Object.keys(JOB_KINDS).join(', ')} (see GET /v1/jobs/kinds)`);
  const raw = b['input'];
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new UsageError('"input" must be an object');
  const input: JobInput = checkWhere(raw as Record<string, unknown>, (field) => `input.${field}`);
  const i = raw as Record<string, unknown>;
  if (kind === 'sandbox.exec') {
    input.command = checkCommand(i['command'], 'input.command');
    const t = checkTimeout(i['timeout_ms'], 'input.timeout_ms');
    if (t) input.timeout_ms = t;
  } else {
    const steps = i['steps'];
    if (!Array.isArray(steps) || steps.length === 0 || steps.length > 100) throw new UsageError('input.steps must be an array of 1 to 100 steps');
    input.steps = steps.map((s, n) => {
      if (typeof s !== 'object' || s === null) throw new UsageError(`input.steps[${n}] must be an object`);
      const step = s as Record<string, unknown>;
      const t = checkTimeout(step['timeout_ms'], `input.steps[${n}].timeout_ms`);
      return { command: checkCommand(step['command'], `input.steps[${n}].command`), ...(t ? { timeout_ms: t } : {}) };
    });
  }
  const out: ReturnType<typeof checkJobRequest> = { kind, input };
  if (b['run_at'] !== undefined) {
    const at = typeof b['run_at'] === 'string' ? new Date(b['run_at']) : undefined;
    if (!at || Number.isNaN(at.getTime())) throw new UsageError('"run_at" must be a date and time (ISO 8601, e.g. 2026-01-02T03:04:05Z)');
    out.runAt = at;
  }
  if (b['idempotency_key'] !== undefined) {
    const key = b['idempotency_key'];
    if (typeof key !== 'string' || key === '' || key.length > 200) throw new UsageError('"idempotency_key" must be a string of 1 to 200 characters');
    out.idempotencyKey = key;
  }
  return out;
}

/**
 * Queues a job, or returns the one its idempotency key names already
 * (`created: false`). A keyed job's id is derived from its owner and key,
 * so even a crash between two writes cannot give one key two jobs.
 */
export async function submitJob(principal: Principal, request: ReturnType<typeof checkJobRequest>, env?: Env): Promise<{ job: Job; created: boolean }> {
  await mkdir(queueDir(env), { recursive: true, mode: 0o700 });
  return withLock(join(jobsDir(env), 'submit.lock'), { purpose: 'queueing a job' }, async () => {
    const id = request.idempotencyKey
      ? createHash('sha256').update(`${principal.owner}\n${request.idempotencyKey}`).digest('hex').slice(0, 16)
      : randomBytes(8).toString('hex');
    const existing = request.idempotencyKey ? await readJob(id, env) : undefined;
    if (existing) return { job: existing, created: false };
    const steps: StepResult[] = request.kind === 'sandbox.exec' ? [{ command: request.input.command as string | string[], state: 'pending' }] : (request.input.steps ?? []).map((s) => ({ command: s.command, state: 'pending' }));
    const job: Job = {
      id,
      owner: principal.owner,
      kind: request.kind,
      state: 'queued',
      input: request.input,
      created_at: new Date().toISOString(),
      ...(request.runAt ? { run_at: request.runAt.toISOString() } : {}),
      ...(request.idempotencyKey ? { idempotency_key: request.idempotencyKey } : {}),
      ...(principal.keyId ? { key_id: principal.keyId } : {}),
      steps,
    };
    await writeJob(job, env);
    await enqueue(job, env);
    return { job, created: true };
  });
}

export async function ownedJob(principal: Principal, id: string, env?: Env): Promise<Job> {
  const job = await readJob(id, env);
  if (!job || job.owner !== principal.owner) throw new InputError(`no job "${id}"`, { code: 'NOT_FOUND' });
  return job;
}

/** Runs one job to its end, writing its file at every step. */
async function runJob(job: Job, options: { env?: Env; maxOutputBytes: number; signal: AbortSignal }): Promise<void> {
  const principal: Principal = { keyId: job.key_id ?? '', owner: job.owner, scopes: new Set() };
  const input = job.input;
  const save = (): Promise<void> => writeJob(job, options.env);
  let interrupted = false;
  try {
    if (job.key_id && !(await keyActive(job.key_id, options.env))) throw new InputError('the API key that queued this job was revoked before it ran', { code: 'REVOKED' });
    await inTarget(
      principal,
      { ...(input.workspace !== undefined ? { workspace: input.workspace } : {}), ...(input.image !== undefined ? { image: input.image } : {}) },
      async (target) => {
        job.workspace = target;
        await save();
        const timeouts = job.kind === 'sandbox.exec' ? [input.timeout_ms] : (input.steps ?? []).map((s) => s.timeout_ms);
        for (let n = 0; n < job.steps.length; n++) {
          const step = job.steps[n] as StepResult;
          step.state = 'running';
          step.started_at = new Date().toISOString();
          await save();
          const out = new Captured(options.maxOutputBytes);
          const timeoutMs = timeouts[n];
          const result = await execIn(target, step.command, out, {
            ...(input.cwd ? { cwd: input.cwd } : {}),
            ...(input.env ? { env: input.env } : {}),
            ...(timeoutMs ? { timeoutMs } : {}),
            signal: options.signal,
            ...(options.env ? { envOverride: options.env } : {}),
          });
          Object.assign(step, result, out.result(), { ended_at: new Date().toISOString(), state: result.exit_code === 0 && !result.timed_out ? 'succeeded' : 'failed' });
          if (options.signal.aborted) {
            // The service stopped under it: its command was killed, which says nothing about the command.
            step.state = 'interrupted';
            interrupted = true;
            for (const rest of job.steps.slice(n + 1)) rest.state = 'skipped';
            break;
          }
          await save();
          if ((step.state as StepResult['state']) === 'failed') {
            for (const rest of job.steps.slice(n + 1)) rest.state = 'skipped';
            job.error = `step ${n + 1} ${result.timed_out ? 'timed out' : `exited with ${result.exit_code}`}`;
            break;
          }
        }
      },
      { ...(options.env ? { env: options.env } : {}), signal: options.signal },
    );
    job.state = job.steps.every((s) => s.state === 'succeeded') ? 'succeeded' : 'failed';
  } catch (error) {
    job.state = 'failed';
    job.error = (error as Error).message;
  }
  if (interrupted || (options.signal.aborted && job.steps.every((s) => s.state === 'pending' || s.state === 'running' || s.state === 'skipped' || s.state === 'interrupted'))) {
    job.state = 'interrupted';
    job.error = 'cs serve stopped while this job ran; it is not run again';
    for (const s of job.steps) if (s.state === 'running' || s.state === 'pending') s.state = s.state === 'running' ? 'interrupted' : 'skipped';
  }
  job.ended_at = new Date().toISOString();
  await save();
}

/**
 * The runner: one per data directory (a lock: a second `cs serve` on the
 * same data directory refuses to start). It marks jobs a previous service
 * left running as interrupted, then runs queued jobs whose time has come, a
 * few at once, one pass at a time. Returns a function that stops taking
 * jobs, stops the running ones (recorded as interrupted) and waits for them.
 */
export async function startRunner(options: { env?: Env; concurrency?: number; maxOutputBytes?: number; log?: (line: string) => void; pollMs?: number }): Promise<{ stop: () => Promise<void>; poke: () => void }> {
  const log = options.log ?? (() => undefined);
  await mkdir(queueDir(options.env), { recursive: true, mode: 0o700 });
  let lock: Lock;
  try {
    lock = await acquireLock(join(jobsDir(options.env), 'runner.lock'), { purpose: 'running jobs for cs serve', timeoutMs: 0 });
  } catch (error) {
    throw new InputError(`another cs serve runs the jobs of this data directory: ${(error as Error).message}`, { code: 'LOCKED' });
  }
  for (const job of await listJobs(options.env)) {
    if (job.state === 'queued') await enqueue(job, options.env);
    if (job.state !== 'running') continue;
    job.state = 'interrupted';
    job.error = 'cs serve stopped while this job ran; it is not run again';
    job.ended_at = new Date().toISOString();
    for (const s of job.steps) if (s.state === 'running' || s.state === 'pending') s.state = s.state === 'running' ? 'interrupted' : 'skipped';
    await writeJob(job, options.env);
    log(`job ${job.id} was interrupted by the last stop`);
  }
  const controller = new AbortController();
  const running = new Map<string, Promise<void>>();
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let pass: Promise<void> | undefined;
  let again = false;

  const claim = async (id: string): Promise<void> => {
    // Read again: only a job still queued is taken, and it is marked running on disk before it starts.
    const job = await readJob(id, options.env);
    if (!job || job.state !== 'queued') {
      await dequeue(id, options.env);
      return;
    }
    job.state = 'running';
    job.started_at = new Date().toISOString();
    await writeJob(job, options.env);
    await dequeue(id, options.env);
    log(`job ${job.id} (${job.kind}) started`);
    const done = runJob(job, { ...(options.env ? { env: options.env } : {}), maxOutputBytes: options.maxOutputBytes ?? 1024 * 1024, signal: controller.signal })
      .catch((error: Error) => log(`job ${job.id}: ${error.message}`))
      .finally(() => {
        running.delete(job.id);
        log(`job ${job.id} ${job.state}`);
        poke();
      });
    running.set(job.id, done);
  };

  const tick = async (): Promise<void> => {
    const now = Date.now();
    const ids = (await readdir(queueDir(options.env)).catch(() => [] as string[])).filter((n) => /^[0-9a-f]{16}$/.test(n)).sort();
    for (const id of ids) {
      if (stopped || running.size >= (options.concurrency ?? 4)) break;
      if (running.has(id)) continue;
      const at = await readFile(join(queueDir(options.env), id), 'utf8').catch(() => undefined);
      if (at === undefined || (at !== '' && Date.parse(at) > now)) continue;
      await claim(id);
    }
  };

  /** One pass at a time; a request during a pass makes one more pass after it. */
  const poke = (): void => {
    if (stopped) return;
    if (pass) {
      again = true;
      return;
    }
    pass = tick()
      .catch((error: Error) => log(`jobs: ${error.message}`))
      .finally(() => {
        pass = undefined;
        if (again) {
          again = false;
          poke();
        }
      });
  };
  const schedule = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      poke();
      schedule();
    }, options.pollMs ?? 250);
  };
  poke();
  schedule();
  return {
    poke,
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await pass;
      // Running jobs are stopped and recorded as interrupted (a kill -9 leaves them `running`: the next start says so).
      controller.abort();
      await Promise.all(running.values());
      await lock.release();
    },
  };
}
