import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { BIN } from '../test/helpers/cli.js';
import { importTinyImage } from '../test/helpers/vm.js';
import { benchHome, ensureBuilt, median, removeAll, timed } from './common.js';

/**
 * `npm run bench -- restore`: what restore points and clones cost as the
 * disk fills. Two workspaces (tiny busybox image, 4 GiB sparse disk) have
 * 100 MB and 2 GB of non-zero data written inside the guest; then, with
 * each stopped, the whole `cs` command is timed (median of RESTORE_RUNS):
 * taking a restore point, restoring it, cloning the workspace; and once
 * on the running workspace, a live restore point (file system frozen).
 *
 * Peer, in the same run: `cp --sparse=always` of the workspace's disk,
 * which is what a restore point costs a tool that copies disks (and what
 * cs would pay without copy-on-write). Target: cs's times for 2 GB within
 * 2x of those for 100 MB. Nothing passes or fails; it prints numbers.
 */

const RUNS = Number(process.env['RESTORE_RUNS'] ?? 3);
const SIZES = [100, 2000];

export async function benchRestore(): Promise<void> {
  await ensureBuilt();
  const { home, env } = await benchHome();
  const cs = (args: string[]) => execa(process.execPath, [BIN, ...args], { env, extendEnv: false, reject: true });
  const out = process.stdout;
  const results: { mb: number; point: number; restore: number; clone: number; live: number; cp: number; used: number }[] = [];
  try {
    const image = await importTinyImage(env);
    for (const mb of SIZES) {
      const name = `w${mb}`;
      process.stderr.write(`workspace ${name}: writing ${mb} MB inside the guest…\n`);
      await cs(['workspace', 'create', '--name', name, '--image', image, '--disk', '4Gi', '--memory', '512Mi']);
      // Non-zero bytes: zeros would be stored as holes and cost nothing.
      await cs(['exec', '--workspace', name, '--', 'sh', '-c', `yes 0123456789abcdef0123456789abcdef | head -c ${mb * 1_000_000} > /home/owner/data && sync`]);
      const live = await timed(() => cs(['workspace', 'snapshots', 'create', name, '--name', 'live']));
      await cs(['workspace', 'stop', name]);
      const points: number[] = [];
      const restores: number[] = [];
      const clones: number[] = [];
      const copies: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        points.push((await timed(() => cs(['workspace', 'snapshots', 'create', name, '--name', `p${i}`]))).ms);
        restores.push((await timed(() => cs(['workspace', 'snapshots', 'restore', name, `p${i}`]))).ms);
        clones.push((await timed(() => cs(['workspace', 'create', '--name', `${name}-c${i}`, '--clone-from', name]))).ms);
        const dir = join(home, 'sandboxes', name, name);
        const record = JSON.parse(await readFile(join(dir, 'workspace.json'), 'utf8')) as { disk: { top: string; parents: Record<string, string | null> } };
        // What the guest wrote sits in the chain's first overlay: the file a copying tool would copy.
        const files = Object.keys(record.disk.parents).map((f) => join(dir, 'disk', f));
        const biggest = (await Promise.all(files.map(async (f) => ({ f, size: Number((await execa('du', ['-B1', f])).stdout.split('\t')[0]) })))).sort((a, b) => b.size - a.size)[0];
        copies.push((await timed(() => execa('cp', ['--sparse=always', biggest?.f ?? '', join(home, `copy-${i}`)]))).ms);
        await removeAll(join(home, `copy-${i}`));
      }
      const used = JSON.parse((await cs(['workspace', 'show', name, '--json'])).stdout) as { bytes: number };
      results.push({ mb, point: median(points), restore: median(restores), clone: median(clones), live: live.ms, cp: median(copies), used: used.bytes });
    }
    const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`.padStart(8);
    out.write(`\nrestore points and clones of a stopped workspace, whole cs command, median of ${RUNS}\n`);
    out.write(`  written   used on host   point     restore   clone     live point   peer: cp --sparse of the disk\n`);
    for (const r of results) {
      out.write(`  ${`${r.mb} MB`.padEnd(8)}  ${`${(r.used / 1e6).toFixed(0)} MB`.padEnd(13)}  ${fmt(r.point)}  ${fmt(r.restore)}  ${fmt(r.clone)}  ${fmt(r.live)}     ${fmt(r.cp)}\n`);
    }
    const [small, big] = results;
    if (small && big) {
      const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
      out.write(`  2 GB / 100 MB: point ${ratio(big.point, small.point)}, restore ${ratio(big.restore, small.restore)}, clone ${ratio(big.clone, small.clone)}, live point ${ratio(big.live, small.live)} (target: within 2x); cp ${ratio(big.cp, small.cp)}\n`);
      out.write(`  at 2 GB, cs point is ${ratio(big.point, big.cp)} of cp, clone ${ratio(big.clone, big.cp)} of cp\n`);
    }
  } finally {
    await execa('pkill', ['-f', home], { reject: false });
    await removeAll(home);
  }
}
