import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { openAgent } from '../src/workspace/control.js';
import { BIN } from '../test/helpers/cli.js';
import { importTinyImage } from '../test/helpers/vm.js';
import { benchHome, ensureBuilt, median, removeAll, tempDir, timed } from './common.js';

/**
 * `npm run bench -- reconcile`: from saving a definition to the change
 * being visible in the running workspace. `cs reconcile --watch` follows a
 * folder holding one sandbox (tiny busybox image) whose daemon writes its
 * $GREETING to /tmp/tick every 20 ms and whose /etc/motd is a template of
 * it. Each run saves the file the way editors do (write beside, rename
 * over) with a new GREETING, then reads /tmp/tick and /etc/motd through
 * the guest agent every 5 ms until both show it: that is the latency
 * (target: under 1 s). Median and worst of RECONCILE_RUNS.
 *
 * Peer, in the same run: applying the same change the way tools without
 * live updates do, by restarting the workspace (`cs workspace stop` then
 * `cs workspace start`, which waits until it is ready again). Nothing passes
 * or fails; it prints numbers and the ratio.
 */

const RUNS = Number(process.env['RECONCILE_RUNS'] ?? 7);

function definition(image: string, greeting: string): string {
  return `name: bench
workspaces:
  - name: dev
    base_snapshot: oci://${image}
    resources: {memory: 256Mi, disk: 512Mi}
    env:
      - GREETING=${greeting}
    system:
      files:
        - path: /etc/motd
          template: "\${GREETING}\\n"
      daemons:
        - name: ticker
          run:
            cmd: while true; do echo "$GREETING" > /tmp/tick.new && mv /tmp/tick.new /tmp/tick; sleep 0.02; done
`;
}

export async function benchReconcile(): Promise<void> {
  await ensureBuilt();
  const { home, env } = await benchHome();
  const defs = await tempDir('csb-defs-');
  const file = join(defs, 'bench.yaml');
  const cs = (args: string[]) => execa(process.execPath, [BIN, ...args], { env, extendEnv: false, reject: true });
  const out = process.stdout;
  const save = async (text: string): Promise<void> => {
    await writeFile(`${file}.swp`, text);
    await rename(`${file}.swp`, file);
  };
  const startWatcher = () => execa(process.execPath, [BIN, 'reconcile', '--watch', defs, '--resync', '10m'], { env, extendEnv: false, reject: false });
  let watcher: ReturnType<typeof startWatcher> | undefined;
  try {
    const image = await importTinyImage(env);
    await save(definition(image, 'g0'));
    await cs(['apply', '-f', defs]);
    process.env['CS_HOME'] = home;
    const dir = join(home, 'sandboxes', 'bench', 'dev');
    watcher = startWatcher();
    let log = '';
    watcher.stderr?.on('data', (c: Buffer) => (log += c.toString()));
    for (let i = 0; i < 200 && !log.includes('start:'); i++) await new Promise((r) => setTimeout(r, 50));

    const agent = await openAgent(dir, 'bench/dev');
    const read = async (path: string): Promise<string> => (await agent.readFile(path).catch(() => Buffer.alloc(0))).toString('utf8').trim();
    const latencies: number[] = [];
    try {
      for (let i = 1; i <= RUNS; i++) {
        const greeting = `g${i}`;
        const { ms } = await timed(async () => {
          await save(definition(image, greeting));
          for (;;) {
            if ((await read('/tmp/tick')) === greeting && (await read('/etc/motd')) === greeting) return;
            await new Promise((r) => setTimeout(r, 5));
          }
        });
        latencies.push(ms);
        process.stderr.write(`save ${i}: visible after ${ms.toFixed(0)} ms\n`);
        await new Promise((r) => setTimeout(r, 300));
      }
    } finally {
      agent.close();
    }
    watcher.kill('SIGINT');
    await watcher;
    watcher = undefined;

    // The peer: the same kind of change applied by a restart.
    const restarts: number[] = [];
    for (let i = 0; i < 3; i++) {
      restarts.push((await timed(async () => {
        await cs(['workspace', 'stop', 'bench/dev']);
        await cs(['workspace', 'start', 'bench/dev']);
      })).ms);
    }

    const fmt = (ms: number) => `${(ms / 1000).toFixed(3)} s`;
    out.write(`\nfrom saving a definition to the change being visible in the running workspace (${RUNS} saves)\n`);
    out.write(`  cs reconcile --watch, in place:  median ${fmt(median(latencies))}, worst ${fmt(Math.max(...latencies))}  (target: under 1 s)\n`);
    out.write(`  peer: applying by restart (stop + start until ready): median ${fmt(median(restarts))}\n`);
    out.write(`  in place takes ${(median(latencies) / median(restarts)).toFixed(2)}x the time of a restart, and keeps the workspace's processes and uptime\n`);
  } finally {
    watcher?.kill('SIGKILL');
    await cs(['sandbox', 'remove', 'bench']).catch(() => undefined);
    await execa('pkill', ['-f', home], { reject: false });
    await removeAll(home, defs);
  }
}
