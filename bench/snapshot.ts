import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { importDirectory } from '../src/snapshot/import-dir.js';
import { BIN } from '../test/helpers/cli.js';
import { benchHome, ensureBuilt, median, removeAll, timed } from './common.js';
import { debianMinbase } from './debian.js';

/**
 * `npm run bench -- snapshot`: what a base snapshot of a workspace costs
 * when 1 MiB of its root filesystem changed (one 768 KiB file and 64 files
 * of 4 KiB), on a Debian minbase workspace.
 *
 * cs: `cs snapshot create NAME -W bench/dev -f`, whole command (node start,
 * freezing the running guest's disk, reading the changed files from the
 * ext4 image, gzip, store), running and then stopped. Peer, in the same
 * run: a full `tar -cf` of the same root filesystem, which is what a
 * snapshot tool that does not know what changed has to read: on the host
 * from the page cache (the cheapest it can ever be), and inside the running
 * guest (what snapshotting a live microVM without change tracking costs).
 * Target: under 1 s and under 10% of the tar. Nothing passes or fails; it
 * prints numbers.
 */

const RUNS = Number(process.env['SNAPSHOT_RUNS'] ?? 5);

export async function benchSnapshot(): Promise<void> {
  await ensureBuilt();
  const { home, env } = await benchHome();
  const cs = (args: string[]) => execa(process.execPath, [BIN, ...args], { env, extendEnv: false, reject: true });
  const out = process.stdout;
  try {
    const tree = await debianMinbase();
    process.stderr.write('importing the Debian minbase tree as an image…\n');
    await importDirectory({ dir: tree, reference: 'localhost/bench/debian:bookworm', env });
    const file = join(home, 'bench.yaml');
    await writeFile(file, 'name: bench\nworkspaces:\n  - name: dev\n    base_snapshot: oci://localhost/bench/debian:bookworm\n    resources: { memory: 1Gi, disk: 4Gi }\n');
    process.stderr.write('creating the workspace…\n');
    await cs(['sandbox', 'create', '-f', file, '--wait']);
    await cs([
      'exec', '-W', 'bench/dev', '--user', 'root', '--', 'sh', '-c',
      'mkdir -p /opt/bench && head -c 786432 /dev/urandom > /opt/bench/blob && for i in $(seq 1 64); do head -c 4096 /dev/urandom > /opt/bench/small-$i; done && sync',
    ]);
    const rootBytes = Number((await execa('du', ['-sb', tree])).stdout.split('\t')[0]);

    /** Runs the command with its progress lines on stderr, timestamped as they arrive. */
    const snapshot = async (label: string): Promise<{ wall: number[]; inside: number[]; layer: number; phases: string }> => {
      const wall: number[] = [];
      const inside: number[] = [];
      const phases = new Map<string, number[]>();
      let layer = 0;
      for (let i = 0; i < RUNS; i++) {
        const start = process.hrtime.bigint();
        const child = execa(process.execPath, [BIN, 'snapshot', 'create', `bench-${label}`, '-W', 'bench/dev', '-f'], { env, extendEnv: false, reject: true });
        let seen = '';
        child.stderr?.on('data', (chunk: Buffer) => {
          const at = Number(process.hrtime.bigint() - start) / 1e6;
          for (const line of (seen + chunk.toString('utf8')).split('\n').slice(0, -1)) {
            const phase = line.replace(/^… /, '').replace(/ .*(disk|files|layer|image)$/, ' $1').replace(/^Snapshot .*/, 'done');
            phases.set(phase, [...(phases.get(phase) ?? []), at]);
          }
          seen = (seen + chunk.toString('utf8')).split('\n').at(-1) ?? '';
        });
        const done = await child;
        wall.push(Number(process.hrtime.bigint() - start) / 1e6);
        const match = /new layer ([0-9.]+) (B|KiB|MiB|GiB), ([0-9.]+) s/.exec(String(done.stderr));
        inside.push(Number(match?.[3] ?? 0) * 1000);
        layer = Number(match?.[1] ?? 0) * ({ B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[match?.[2] ?? 'B'] ?? 1);
      }
      const list = [...phases].map(([name, at]) => `${name} @${(median(at) / 1000).toFixed(3)}s`).join(', ');
      return { wall, inside, layer, phases: list };
    };
    const tarRuns: number[] = [];
    const tarOut = join(home, 'root.tar');
    const tarOnce = async (): Promise<void> => {
      const r = await timed(() => execa('tar', ['-cf', tarOut, '-C', tree, '.'], { reject: false }));
      tarRuns.push(r.ms);
      await removeAll(tarOut);
    };

    await tarOnce(); // warm the page cache for the peer too
    tarRuns.length = 0;
    const running = await snapshot('running');
    // The same tar from the disk rather than the page cache (root only: it drops the caches).
    const coldTar: number[] = [];
    if (process.getuid?.() === 0) {
      for (let i = 0; i < 3; i++) {
        await execa('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
        const r = await timed(() => execa('tar', ['-cf', tarOut, '-C', tree, '.'], { reject: false }));
        coldTar.push(r.ms);
        await removeAll(tarOut);
      }
    }
    // The other peer: what snapshotting a running microVM costs without knowing what changed,
    // reading its whole root inside the guest (through overlayfs, as the guest sees it).
    const guestTar: number[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await timed(() => cs(['exec', '-W', 'bench/dev', '--user', 'root', '--', 'sh', '-c', 'tar -cf - --one-file-system -C / . 2>/dev/null | wc -c']));
      guestTar.push(r.ms);
    }
    for (let i = 0; i < RUNS; i++) await tarOnce();
    await cs(['sandbox', 'suspend', 'bench']);
    const stopped = await snapshot('stopped');

    const tar = median(tarRuns);
    const fmt = (ms: number): string => `${(ms / 1000).toFixed(3).padStart(6)} s`;
    const pct = (ms: number): string => `${((100 * ms) / tar).toFixed(1).padStart(5)}%`;
    out.write(`\nbase snapshot of a Debian minbase workspace with 1 MiB changed (root filesystem ${(rootBytes / 1e6).toFixed(0)} MB), median of ${RUNS}\n`);
    out.write(`  cs snapshot create, running (frozen)   ${fmt(median(running.wall))}  ${pct(median(running.wall))} of tar   (in cs: ${fmt(median(running.inside))})\n`);
    out.write(`  cs snapshot create, stopped            ${fmt(median(stopped.wall))}  ${pct(median(stopped.wall))} of tar   (in cs: ${fmt(median(stopped.inside))})\n`);
    out.write(`  peer: tar -cf of the whole root        ${fmt(tar)}   (on the host, warm page cache)\n`);
    if (coldTar.length > 0) out.write(`  peer: tar -cf of the whole root        ${fmt(median(coldTar))}   (on the host, page cache dropped first; cs running is ${pct(median(running.wall)).trim()} of warm, ${((100 * median(running.wall)) / median(coldTar)).toFixed(1)}% of this)\n`);
    out.write(`  peer: tar of the root in the guest     ${fmt(median(guestTar))}   (cs snapshot running is ${pct(median(running.wall)).trim()} of tar on the host, ${((100 * median(running.wall)) / median(guestTar)).toFixed(1)}% of tar in the guest)\n`);
    out.write(`  new layer: ${(running.layer / 1024).toFixed(0)} KiB compressed\n`);
    out.write(`  phases (running, from command start): ${running.phases}\n`);
    out.write(`  phases (stopped, from command start): ${stopped.phases}\n`);
    out.write(`  runs (s): running ${running.wall.map((v) => (v / 1000).toFixed(2)).join(' ')}; stopped ${stopped.wall.map((v) => (v / 1000).toFixed(2)).join(' ')}; tar ${tarRuns.map((v) => (v / 1000).toFixed(2)).join(' ')}\n`);
  } finally {
    await cs(['sandbox', 'remove', 'bench']).catch(() => undefined);
    await removeAll(home);
  }
}
