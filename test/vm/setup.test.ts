/**
 * `cs setup` and `cs doctor` as a user runs them, against a fresh CS_HOME
 * that shares the machine's fetched kernel (so the test does not download
 * it again): setup is idempotent, doctor says what it found, and a missing
 * piece is named with its fix.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, runCs } from '../helpers/cli.js';
import { vmHome } from '../helpers/vm.js';

interface SetupResult {
  installed: string[];
  kernel: { version: string; source: string };
  initramfs: { path: string; bytes: number };
  accel: { accel: string; reason: string };
}

describe('cs setup and cs doctor', () => {
  let home: Awaited<ReturnType<typeof vmHome>>;

  beforeAll(async () => {
    await ensureBuilt('setup');
    home = await vmHome();
  }, 300_000);

  afterAll(async () => {
    await home?.cleanup();
  });

  it('sets up the kernel, initramfs and accelerator verdict, and a second run changes nothing', async () => {
    const first = await runCs(['setup', '--json'], { env: home.env, timeoutMs: 300_000 });
    expect(first.exitCode, first.stderr).toBe(0);
    const a = JSON.parse(first.stdout) as SetupResult;
    expect(a.installed).toEqual([]);
    expect(a.kernel.version).toMatch(/-cloud-amd64$/);
    expect(a.initramfs.bytes).toBeGreaterThan(1024 * 1024);
    expect(['kvm', 'tcg']).toContain(a.accel.accel);
    expect(a.accel.reason).not.toBe('');
    const second = await runCs(['setup', '--json'], { env: home.env, timeoutMs: 300_000 });
    const b = JSON.parse(second.stdout) as SetupResult;
    expect(b.initramfs.path).toBe(a.initramfs.path);
    expect(b.accel).toEqual(a.accel);
    expect((await readdir(join(home.home, 'initramfs'))).filter((n) => n === a.initramfs.path.split('/').pop())).toHaveLength(1);
  }, 300_000);

  it('doctor reports every check as ok, for people and as JSON', async () => {
    const json = await runCs(['doctor', '--json'], { env: home.env });
    expect(json.exitCode, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout) as { ok: boolean; checks: { name: string; ok: boolean; detail: string }[] };
    expect(report.ok).toBe(true);
    expect(report.checks.map((c) => c.name)).toEqual(['system packages', 'qemu', 'busybox', 'compiler', 'kernel', 'accelerator']);
    const human = await runCs(['doctor'], { env: home.env });
    expect(human.stdout).toMatch(/^ok\s+accelerator\s+(kvm|tcg): /m);
  });

  it('doctor names a missing kernel and how to get it, and exits non-zero', async () => {
    const empty = await mkdtemp(join(tmpdir(), 'cs-doctor-'));
    try {
      const result = await runCs(['doctor'], { env: { ...home.env, CS_HOME: empty } });
      expect(result.exitCode).toBe(5);
      expect(result.stdout).toMatch(/^FAIL kernel\s+no guest kernel fetched yet\n\s+fix: cs setup$/m);
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });
});
