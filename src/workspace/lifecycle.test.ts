import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { waitUntil } from './lifecycle.js';
import { ACCOUNT_STEP, writeRun, type RunRecord } from './state.js';

// The run record as a live supervisor writes it (this process stands in for the supervisor: only its pid is read).
function run(phase: RunRecord['phase'], steps: RunRecord['steps']): RunRecord {
  return { supervisorPid: process.pid, startedAt: new Date().toISOString(), timings: {}, phase, steps };
}

const at = new Date().toISOString();

describe('waiting for the owner account', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cs-wait-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('holds a command while the account step runs, and lets it go once the step has passed', async () => {
    await writeRun(dir, run('starting', [{ name: ACCOUNT_STEP, startedAt: at }]));
    let done = false;
    const waiting = waitUntil(dir, 'account').then((r) => {
      done = true;
      return r;
    });
    await new Promise((r) => setTimeout(r, 200));
    expect(done).toBe(false);
    await writeRun(dir, run('starting', [{ name: ACCOUNT_STEP, startedAt: at, endedAt: at, ok: true }, { name: 'checkout src', startedAt: at }]));
    const seen = await waiting;
    expect(seen.steps[0]?.ok).toBe(true);
  });

  it('holds a command while the VM boots', async () => {
    await writeRun(dir, run('booting', []));
    let done = false;
    const waiting = waitUntil(dir, 'account').then(() => (done = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(done).toBe(false);
    await writeRun(dir, run('ready', [{ name: ACCOUNT_STEP, startedAt: at, endedAt: at, ok: true }]));
    await waiting;
  });

  it('lets a command into a workspace whose start-up failed (that is how one looks into it)', async () => {
    await writeRun(dir, run('failed', [{ name: ACCOUNT_STEP, startedAt: at, endedAt: at, ok: false, error: 'no useradd' }]));
    expect((await waitUntil(dir, 'account')).phase).toBe('failed');
  });

  it('still refuses to wait for readiness of a failed start-up', async () => {
    await writeRun(dir, { ...run('failed', []), error: 'on_create exited 2' });
    await expect(waitUntil(dir, 'ready')).rejects.toThrow('on_create exited 2');
  });
});
