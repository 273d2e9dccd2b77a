import { readFile } from 'node:fs/promises';
import { execa } from 'execa';
import { BIN } from '../test/helpers/cli.js';
import { importTinyImage } from '../test/helpers/vm.js';
import { benchHome, ensureBuilt, removeAll, timed } from './common.js';

/**
 * `npm run bench -- api`: `cs serve` under load. Four workspaces (tiny
 * busybox image) are started; then API_REQUESTS (200) exec requests are
 * sent at once, spread over the four, each running a short command that
 * prints a line. Reported: throughput, latency percentiles, errors (target:
 * zero) and the service's peak memory (VmHWM).
 *
 * Peer, in the same run: the same commands through the CLI, one `cs exec`
 * process each, API_CLI_PARALLEL (16) at a time (200 at once would be 200
 * Node processes). Nothing passes or fails; it prints numbers and ratios.
 */

const REQUESTS = Number(process.env['API_REQUESTS'] ?? 200);
const CLI_PARALLEL = Number(process.env['API_CLI_PARALLEL'] ?? 16);
const WORKSPACES = ['w1', 'w2', 'w3', 'w4'];

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

export async function benchApi(): Promise<void> {
  await ensureBuilt();
  const { home, env } = await benchHome();
  const cs = (args: string[]) => execa(process.execPath, [BIN, ...args], { env, extendEnv: false, reject: true });
  const out = process.stdout;
  const startServe = () => execa(process.execPath, [BIN, 'serve', '--listen', '127.0.0.1:0'], { env, extendEnv: false, reject: false });
  let service: ReturnType<typeof startServe> | undefined;
  try {
    const image = await importTinyImage(env);
    for (const name of WORKSPACES) await cs(['workspace', 'create', '--name', name, '--image', image, '--memory', '256Mi', '--disk', '512Mi', '--start']);
    const key = (await cs(['apikey', 'create', '--name', 'bench', '--scope', 'all'])).stdout.trim();
    service = startServe();
    let log = '';
    service.stderr?.on('data', (c: Buffer) => (log += c.toString()));
    for (let i = 0; i < 200 && !/listening on (\S+)/.test(log); i++) await new Promise((r) => setTimeout(r, 50));
    const url = /listening on (\S+)/.exec(log)?.[1] ?? '';
    const pid = service.pid ?? 0;
    const baseRss = await peakRss(pid);

    process.stderr.write(`${REQUESTS} concurrent exec requests over ${WORKSPACES.length} workspaces…\n`);
    const latencies: number[] = [];
    const errors: string[] = [];
    const { ms: apiMs } = await timed(() =>
      Promise.all(
        Array.from({ length: REQUESTS }, async (_, i) => {
          const workspace = WORKSPACES[i % WORKSPACES.length];
          const start = performance.now();
          try {
            const res = await fetch(`${url}/v1/exec`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ workspace, command: `echo request-${i}` }) });
            const body = (await res.json()) as { exit_code?: number; stdout?: string; error?: { message: string } };
            if (res.status !== 200 || body.exit_code !== 0 || body.stdout !== `request-${i}\n`) errors.push(`${res.status} ${body.error?.message ?? JSON.stringify(body).slice(0, 120)}`);
          } catch (error) {
            errors.push((error as Error).message);
          }
          latencies.push(performance.now() - start);
        }),
      ),
    );
    const rss = await peakRss(pid);

    process.stderr.write(`the same through \`cs exec\`, ${CLI_PARALLEL} at a time…\n`);
    let next = 0;
    let cliErrors = 0;
    const { ms: cliMs } = await timed(() =>
      Promise.all(
        Array.from({ length: CLI_PARALLEL }, async () => {
          while (next < REQUESTS) {
            const i = next++;
            const r = await execa(process.execPath, [BIN, 'exec', '-W', WORKSPACES[i % WORKSPACES.length] as string, '--', 'echo', `request-${i}`], { env, extendEnv: false, reject: false });
            if (r.exitCode !== 0 || r.stdout !== `request-${i}`) cliErrors++;
          }
        }),
      ),
    );

    latencies.sort((a, b) => a - b);
    const fmt = (ms: number) => `${ms.toFixed(0)} ms`;
    out.write(`\ncs serve: ${REQUESTS} concurrent POST /v1/exec over ${WORKSPACES.length} workspaces\n`);
    out.write(`  throughput  ${(REQUESTS / (apiMs / 1000)).toFixed(1)} requests/s (${(apiMs / 1000).toFixed(2)} s in all)\n`);
    out.write(`  latency     p50 ${fmt(percentile(latencies, 50))}, p90 ${fmt(percentile(latencies, 90))}, p99 ${fmt(percentile(latencies, 99))}, max ${fmt(latencies[latencies.length - 1] ?? 0)}\n`);
    out.write(`  errors      ${errors.length} (target: 0)${errors.length ? `: ${[...new Set(errors)].slice(0, 3).join('; ')}` : ''}\n`);
    out.write(`  memory      service peak RSS ${(rss / 1024 / 1024).toFixed(0)} MiB (idle ${(baseRss / 1024 / 1024).toFixed(0)} MiB)\n`);
    out.write(`  peer: cs exec, ${CLI_PARALLEL} processes at a time: ${(REQUESTS / (cliMs / 1000)).toFixed(1)} commands/s, ${cliErrors} errors\n`);
    out.write(`  the API runs ${(cliMs / apiMs).toFixed(1)}x the commands per second of the CLI\n`);
  } finally {
    service?.kill('SIGINT');
    await service?.catch(() => undefined);
    for (const name of WORKSPACES) await cs(['workspace', 'remove', name, '--force']).catch(() => undefined);
    await execa('pkill', ['-f', home], { reject: false });
    await removeAll(home);
  }
}
