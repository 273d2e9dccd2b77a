/**
 * Boot reliability: one workspace from the tiny image booted 20 times in a
 * row (create, then suspend and resume), each boot answering a command. A
 * guest that hangs anywhere in its boot (kernel timer calibration under TCG,
 * a module, the init, the agent) fails the iteration within its time bound,
 * with the console and supervisor logs in the failure message.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, runCs, type Run } from '../helpers/cli.js';
import { importTinyImage, listQemu, vmHome, writeDefinition } from '../helpers/vm.js';

interface Summary {
  status: string;
  timings?: Record<string, number>;
}

const BOOTS = 20;
/** Bound on one whole iteration (boot, command, suspend). */
const ITERATION_MS = 60_000;

function stats(values: number[]): { min: number; median: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  return { min: sorted[0] as number, median, max: sorted[sorted.length - 1] as number };
}

describe('boot reliability', () => {
  let home: Awaited<ReturnType<typeof vmHome>> | undefined;
  let work: string | undefined;
  let env: Record<string, string>;
  let file: string;

  beforeAll(async () => {
    await ensureBuilt('sandbox/create');
    home = await vmHome();
    env = home.env;
    work = await mkdtemp(join(tmpdir(), 'cs-rel-'));
    await importTinyImage(env);
    file = await writeDefinition(work, 'rel', 'workspaces:\n  - name: dev\n    base_snapshot: oci://localhost/test/tiny:1\n    resources: { memory: 256Mi, disk: 1Gi }\n');
  }, 300_000);

  afterAll(async () => {
    if (home) {
      await runCs(['sandbox', 'remove', 'rel'], { env: home.env, timeoutMs: 60_000 });
      await home.cleanup();
    }
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** What a user would look at when a boot went wrong. */
  async function diagnostics(what: string, run: Run): Promise<string> {
    const dir = join(home?.home ?? '', 'sandboxes', 'rel', 'dev');
    const tail = async (name: string) => (await readFile(join(dir, name), 'utf8').catch(() => '')).trimEnd().split('\n').slice(-15).join('\n');
    return [
      `${what}: exit ${run.exitCode}`,
      `stderr: ${run.stderr}`,
      `--- console.log\n${await tail('console.log')}`,
      `--- supervisor.log\n${await tail('supervisor.log')}`,
    ].join('\n');
  }

  it(`boots ${BOOTS} times in a row, each answering a command, none hanging`, async () => {
    const agentReady: number[] = [];
    const wall: number[] = [];
    const bootIds = new Set<string>();
    for (let i = 0; i < BOOTS; i++) {
      const started = Date.now();
      const deadline = started + ITERATION_MS;
      const left = () => Math.max(1_000, deadline - Date.now());

      const boot =
        i === 0
          ? await runCs(['sandbox', 'create', '-f', file, '--wait', '--timeout', '50', '--json'], { env, timeoutMs: left() })
          : await runCs(['sandbox', 'resume', 'rel', '--wait', '--timeout', '50', '--json'], { env, timeoutMs: left() });
      expect(boot.exitCode, await diagnostics(`boot ${i + 1}`, boot)).toBe(0);
      const summary = (JSON.parse(boot.stdout) as { workspaces: Summary[] }).workspaces[0];
      expect(summary?.status).toBe('running');
      const ready = summary?.timings?.['agentReady'];
      expect(ready, `boot ${i + 1} has an agentReady timing`).toBeGreaterThan(0);
      agentReady.push(ready as number);

      const exec = await runCs(['exec', '-W', 'rel/dev', '--', 'cat', '/proc/sys/kernel/random/boot_id', '/proc/uptime'], { env, timeoutMs: left() });
      expect(exec.exitCode, await diagnostics(`command after boot ${i + 1}`, exec)).toBe(0);
      const [bootId, uptime] = exec.stdout.split('\n');
      expect(uptime).toMatch(/^\d+\.\d+ \d+\.\d+$/);
      bootIds.add(bootId as string);

      const suspend = await runCs(['sandbox', 'suspend', 'rel', '--json'], { env, timeoutMs: left() });
      expect(suspend.exitCode, await diagnostics(`suspend ${i + 1}`, suspend)).toBe(0);
      expect((JSON.parse(suspend.stdout) as { workspaces: Summary[] }).workspaces[0]?.status).toBe('suspended');

      const took = Date.now() - started;
      expect(took, `iteration ${i + 1} took ${took} ms`).toBeLessThan(ITERATION_MS);
      wall.push(took);
    }
    // Every iteration was a boot of its own, and no VM is left running.
    expect(bootIds.size).toBe(BOOTS);
    expect(await listQemu(home?.home as string)).toEqual([]);
    // `cs sandbox show` reports the last boot's timings as create/resume did.
    const show = await runCs(['sandbox', 'show', 'rel', '--json'], { env });
    expect((JSON.parse(show.stdout) as { workspaces: Summary[] }).workspaces[0]?.timings?.['agentReady']).toBe(agentReady[agentReady.length - 1]);

    const a = stats(agentReady);
    const w = stats(wall);
    console.log(
      `boot reliability: ${BOOTS}/${BOOTS} boots; agent ready after min ${a.min} ms, median ${a.median} ms, max ${a.max} ms; ` +
        `whole iteration (boot, command, suspend) min ${w.min} ms, median ${w.median} ms, max ${w.max} ms`,
    );
  }, BOOTS * ITERATION_MS);
});
