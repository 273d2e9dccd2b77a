import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { importDirectory } from '../src/snapshot/import-dir.js';
import { ensureInitramfs } from '../src/vm/initramfs.js';
import { bootImage, ensureKernel } from '../src/vm/kernel.js';
import { QEMU_BINARY, qemuArgs } from '../src/vm/qemu.js';
import { BIN } from '../test/helpers/cli.js';
import { benchHome, ensureBuilt, median, removeAll, timed } from './common.js';
import { debianMinbase } from './debian.js';

/**
 * `npm run bench -- boot`: how fast a Debian workspace comes back.
 *
 * 1. Phases of one boot, by wall clock on the host: QEMU start to the
 *    kernel's first line (a verbose boot, where that first line costs
 *    nothing yet), kernel to cs's init, init to the agent answering.
 * 2. `cs sandbox resume` of a Debian minbase workspace until its agent
 *    answers, and until a first `cs exec` returns.
 * 3. The peer, in the same run: plain QEMU booting the same kernel the way
 *    a straightforward microvm setup does (the bzImage, no RTC, the
 *    kernel's default self-tests) until the same init runs and powers off.
 * Nothing here passes or fails; it prints numbers and ratios.
 */

const RUNS = Number(process.env['BOOT_RUNS'] ?? 5);

interface Lines {
  /** ms after QEMU started at which each console line was seen. */
  at: { ms: number; line: string }[];
  exitMs: number;
}

/** Boots QEMU directly and timestamps console lines as they appear. */
async function watchBoot(args: string[], consoleLog: string, until: RegExp, timeoutMs = 60_000): Promise<Lines> {
  await rm(consoleLog, { force: true });
  const start = process.hrtime.bigint();
  const ms = (): number => Number(process.hrtime.bigint() - start) / 1e6;
  const child = spawn(QEMU_BINARY, args, { stdio: 'ignore' });
  const at: Lines['at'] = [];
  let seen = 0;
  let exited = false;
  child.on('exit', () => (exited = true));
  while (ms() < timeoutMs) {
    const text = existsSync(consoleLog) ? readFileSync(consoleLog, 'utf8') : '';
    const lines = text.split('\n');
    for (; seen < lines.length - 1; seen++) at.push({ ms: ms(), line: lines[seen] ?? '' });
    if (at.some((l) => until.test(l.line)) || exited) break;
    await new Promise((r) => setTimeout(r, 2));
  }
  const exitMs = ms();
  if (!exited) child.kill('SIGKILL');
  await new Promise((r) => (exited ? r(undefined) : child.once('exit', r)));
  return { at, exitMs };
}

function firstAt(lines: Lines, pattern: RegExp): number | undefined {
  return lines.at.find((l) => pattern.test(l.line))?.ms;
}

function fmt(ms: number | undefined): string {
  return ms === undefined ? '   n/a' : `${(ms / 1000).toFixed(2).padStart(5)} s`;
}

export async function benchBoot(): Promise<void> {
  await ensureBuilt();
  const { home, env } = await benchHome();
  try {
    const kernel = await ensureKernel({ env });
    const initramfs = await ensureInitramfs({ kernel, env });
    const tree = await debianMinbase();
    process.stderr.write('importing the Debian minbase tree as an image…\n');
    await importDirectory({ dir: tree, reference: 'localhost/bench/debian:bookworm', env });

    // A workspace, created once; its image and disk are reused by the direct boots below.
    const file = join(home, 'bench.yaml');
    await writeFile(file, 'name: bench\nworkspaces:\n  - name: dev\n    base_snapshot: oci://localhost/bench/debian:bookworm\n    resources: { memory: 1Gi, disk: 4Gi }\n');
    const cs = (args: string[]) => execa(process.execPath, [BIN, ...args], { env, extendEnv: false, reject: true });
    await cs(['sandbox', 'create', '-f', file, '--wait']);
    await cs(['sandbox', 'suspend', 'bench']);
    const wsDir = join(home, 'sandboxes', 'bench', 'dev');
    const record = JSON.parse(readFileSync(join(wsDir, 'workspace.json'), 'utf8')) as { lowers: string[]; accel: 'kvm' | 'tcg' };
    const direct = join(home, 'direct');
    await mkdir(direct, { recursive: true });
    await execa('cp', ['--sparse=always', join(wsDir, 'disk.ext4'), join(direct, 'disk.ext4')]);
    const machine = {
      accel: record.accel,
      cpus: 1,
      memoryMiB: 1024,
      kernel: await bootImage(kernel),
      initrd: initramfs.path,
      lowers: record.lowers,
      disk: join(direct, 'disk.ext4'),
      agentSocket: join(direct, 'agent.sock'),
      consoleLog: join(direct, 'console.log'),
      hostname: 'dev',
      network: true,
    };

    // 1. Phases.
    const phases: { kernel: number; init: number; agent: number }[] = [];
    const total: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const verbose = qemuArgs(machine);
      const a = verbose.indexOf('-append');
      verbose[a + 1] = (verbose[a + 1] as string).replace(' quiet', '');
      const v = await watchBoot(verbose, machine.consoleLog, /Linux version/);
      const kernelAt = firstAt(v, /Linux version/) ?? 0;
      const quiet = await watchBoot(qemuArgs(machine), machine.consoleLog, /cs-agent: ready/);
      const initAt = firstAt(quiet, /cs-init\[[^\]]*\]: start/) ?? NaN;
      const agentAt = firstAt(quiet, /cs-agent: ready/) ?? NaN;
      phases.push({ kernel: kernelAt, init: initAt - kernelAt, agent: agentAt - initAt });
      total.push(agentAt);
    }

    // 2. cs sandbox resume.
    const resume: number[] = [];
    const firstExec: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const r = await timed(() => cs(['sandbox', 'resume', 'bench']));
      const e = await timed(() => cs(['exec', '-W', 'bench/dev', '--', 'true']));
      resume.push(r.ms);
      firstExec.push(r.ms + e.ms);
      await cs(['sandbox', 'suspend', 'bench']);
    }

    // 3. The peer: plain microvm settings, same kernel and init, init powers off at once.
    const peer: number[] = [];
    const ours: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const plain = qemuArgs({ ...machine, kernel: kernel.vmlinuz, settings: { probe: '1' } });
      const m = plain.indexOf('-M');
      plain[m + 1] = (plain[m + 1] as string).replace('rtc=on', 'rtc=off');
      const a = plain.indexOf('-append');
      plain[a + 1] = (plain[a + 1] as string).replace(' cryptomgr.notests', '');
      peer.push((await watchBoot(plain, machine.consoleLog, /probe ok/)).exitMs);
      ours.push((await watchBoot(qemuArgs({ ...machine, settings: { probe: '1' } }), machine.consoleLog, /probe ok/)).exitMs);
    }

    const out = process.stdout;
    out.write(`\nboot benchmark (${record.accel.toUpperCase()}, Debian bookworm minbase, 1 vCPU, 1 GiB; ${RUNS} runs, medians)\n`);
    out.write(`  QEMU start -> kernel         ${fmt(median(phases.map((p) => p.kernel)))}\n`);
    out.write(`  kernel -> cs init            ${fmt(median(phases.map((p) => p.init)))}\n`);
    out.write(`  cs init -> agent ready       ${fmt(median(phases.map((p) => p.agent)))}\n`);
    out.write(`  QEMU start -> agent ready    ${fmt(median(total))}\n`);
    out.write(`  cs sandbox resume -> agent   ${fmt(median(resume))}   (runs: ${resume.map((v) => (v / 1000).toFixed(2)).join(' ')})\n`);
    out.write(`  ... -> first exec returned   ${fmt(median(firstExec))}\n`);
    out.write(`  QEMU start -> init (cs)      ${fmt(median(ours))}\n`);
    out.write(`  QEMU start -> init (peer)    ${fmt(median(peer))}   plain microvm: bzImage, no RTC, kernel self-tests on\n`);
    out.write(`  ratio cs/peer                ${(median(ours) / median(peer)).toFixed(2)}\n`);
    out.write(`  target: agent ready within ${record.accel === 'kvm' ? '0.30' : '3.00'} s of resume\n`);
    await cs(['sandbox', 'remove', 'bench']).catch(() => undefined);
  } finally {
    await execa('pkill', ['-f', home], { reject: false });
    await removeAll(home);
  }
}
