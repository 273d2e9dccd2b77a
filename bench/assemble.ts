import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { ContentStore } from '../src/oci/store.js';
import { cliEnv, ensureBuilt, median, removeAll, root, sh, tempDir, timedAfterSync } from './common.js';
import { debianMinbase } from './debian.js';

/**
 * `npm run bench -- assemble`: a real Debian minbase root (debootstrap),
 * imported as a one-layer gzip image. In one run, RUNS times each:
 *  - cs cold: `cs rootfs assemble --format erofs --stack` (what a workspace
 *    boots from: an image per snapshot, stacked by overlayfs) with an empty
 *    cache, base + a small home snapshot;
 *  - cs warm: the same after the home snapshot changed, base cached;
 *  - the same two as one self-contained image (`--format erofs`), which
 *    must hold a copy of the base's blocks, and as a folder (`--format dir`);
 *  - `umoci unpack` of the same image;
 *  - `tar -xzf` of the same layer blob;
 *  - `cp -a` of tar's tree: the least any folder output independent of the
 *    cache costs (every file created once more), which bounds what the
 *    warm/cold ratio of `--format dir` can reach;
 *  - the stacked cold and warm builds again inside one running process, as
 *    `cs reconcile --watch` rebuilds a workspace's root after a snapshot
 *    changed: Node's own start (about 0.12 s here) is then in neither.
 */

const RUNS = 5;

async function run(args: string[], home: string): Promise<string> {
  return sh('node', [join(root, 'bin/run.cjs'), ...args], { env: cliEnv({ CS_HOME: home }), extendEnv: false });
}

/**
 * Cold then warm stacked builds in one process (dist/, what the CLI runs,
 * without the CLI's start), each after a sync and a pause like the others.
 */
const IN_PROCESS = `
import { execSync } from 'node:child_process';
import { assemble } from ${JSON.stringify(join(root, 'dist/rootfs/assemble.js'))};
const [work] = process.argv.slice(2);
const settle = () => { execSync('sync'); return new Promise((resolve) => setTimeout(resolve, 1000)); };
const build = async (version, out) => {
  await settle();
  const start = performance.now();
  const result = await assemble({ snapshots: [{ reference: 'localhost/bench/debian:bookworm', kind: 'base' }, { reference: 'localhost/bench/home:' + version, kind: 'home' }], out, format: 'erofs', stack: true });
  return { ms: performance.now() - start, layersApplied: result.layersApplied };
};
const cold = await build('v1', work + '/in-process-cold');
const warm = await build('v2', work + '/in-process-warm');
if (warm.layersApplied !== 1) throw new Error('the warm build applied ' + warm.layersApplied + ' layers');
process.stdout.write(JSON.stringify({ cold: cold.ms, warm: warm.ms }));
`;

const BIG_LAYER = 1024 ** 3;

/**
 * Memory: a layer holding one 1 GiB file, assembled as an erofs image and as
 * a folder; the peak RSS of each `cs rootfs assemble` (GNU time's %M) must
 * stay flat (target: under 200 MB), whatever the layer's size.
 */
async function memory(work: string): Promise<void> {
  const big = join(work, 'big');
  await mkdir(big);
  // Written out, not sparse: the layer must carry the whole gibibyte.
  await sh('sh', ['-c', `head -c ${BIG_LAYER} /dev/zero > "$1"`, 'sh', join(big, 'big.img')]);
  const home = join(work, 'big-home');
  await run(['image', 'import', big, 'localhost/bench/big:v1'], home);
  const peaks: Record<string, number> = {};
  for (const format of ['erofs', 'dir']) {
    const out = join(work, `big-out.${format}`);
    const result = await execa('/usr/bin/time', ['-f', '%M', 'node', join(root, 'bin/run.cjs'), 'rootfs', 'assemble', '--base', 'localhost/bench/big:v1', '--format', format, '--out', out], {
      env: cliEnv({ CS_HOME: home }),
      extendEnv: false,
    });
    peaks[format] = Math.round(Number(result.stderr.trim().split('\n').pop()) / 1024);
    await removeAll(out);
  }
  process.stdout.write(`${JSON.stringify({ scenario: 'assemble-memory', layerUncompressedBytes: BIG_LAYER, peakRssMiB: peaks }, null, 2)}\n`);
  process.stdout.write(`peak RSS for a 1 GiB layer: erofs ${peaks['erofs']} MiB, folder ${peaks['dir']} MiB (target < 200)\n`);
  await removeAll(big, home);
}

export async function benchAssemble(): Promise<void> {
  await ensureBuilt();
  const debian = await debianMinbase();
  const work = await tempDir('cs-bench-assemble-');
  const images = join(work, 'images');
  try {
    // One store holds the images; each measured run copies it (blobs by hardlink) into a fresh CS_HOME.
    await run(['image', 'import', debian, 'localhost/bench/debian:bookworm'], images);
    for (const version of ['v1', 'v2']) {
      const dir = join(work, `home-${version}`);
      await mkdir(join(dir, '.config'), { recursive: true });
      await writeFile(join(dir, '.bashrc'), `# ${version}\nexport EDITOR=vi\n`);
      await writeFile(join(dir, '.config', 'settings.json'), JSON.stringify({ version, data: 'x'.repeat(100_000) }));
      await run(['image', 'import', dir, `localhost/bench/home:${version}`], images);
    }
    const store = await ContentStore.open(join(images, 'store'));
    const base = await store.resolveTag('localhost/bench/debian:bookworm');
    if (!base) throw new Error('import failed');
    const manifest = JSON.parse((await store.readBlob(base, 1 << 22)).toString('utf8')) as { layers: { digest: string; size: number }[] };
    const layer = manifest.layers[0];
    if (!layer) throw new Error('no layer');
    const layerPath = store.blobPath(layer.digest);
    // umoci wants simple tag names: a layout beside the store whose index names the same manifest "v1".
    const umociLayout = join(work, 'umoci-layout');
    await mkdir(umociLayout);
    await sh('cp', ['-al', join(images, 'store', 'blobs'), join(umociLayout, 'blobs')]);
    await writeFile(join(umociLayout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await writeFile(join(umociLayout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ ...base, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }));

    const results = { csCold: [] as number[], csWarm: [] as number[], singleCold: [] as number[], singleWarm: [] as number[], dirCold: [] as number[], dirWarm: [] as number[], umoci: [] as number[], tar: [] as number[], copy: [] as number[], inCold: [] as number[], inWarm: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      const home = await tempDir('cs-bench-home-');
      await sh('cp', ['-al', join(images, 'store'), join(home, 'store')]);
      const out1 = join(work, `out-cold-${i}`);
      const out2 = join(work, `out-warm-${i}`);
      const img1 = join(work, `img-cold-${i}.erofs`);
      const img2 = join(work, `img-warm-${i}.erofs`);
      const stack1 = join(work, `stack-cold-${i}`);
      const stack2 = join(work, `stack-warm-${i}`);
      const umociOut = join(work, `umoci-${i}`);
      const tarOut = join(work, `tar-${i}`);
      const copyOut = join(work, `copy-${i}`);
      // Every step starts after a sync and a pause: on a file system mounted with `discard`, the
      // removals of the round before are still being worked off, and would land on the cold run.
      const settled = <T>(fn: () => Promise<T>) => timedAfterSync(fn, 1000);
      const assemble = (home: string, version: string, format: string, out: string, ...extra: string[]) =>
        settled(() => run(['rootfs', 'assemble', '--base', 'localhost/bench/debian:bookworm', '--home', `localhost/bench/home:${version}`, '--format', format, ...extra, '--out', out, '--json'], home));
      const onlyHome = (step: { value: string }, what: string): { layersApplied: number; cachedLayers: number } => {
        const result = JSON.parse(step.value) as { layersApplied: number; cachedLayers: number };
        if (result.layersApplied !== 1) throw new Error(`the warm ${what} build applied ${result.layersApplied} layers, expected only the home layer`);
        return result;
      };
      // The file system slows down over a run (removals are worked off behind
      // it), which tar feels and cs's image build barely does: tar goes first
      // in every other round, so neither is always measured later.
      const tarStep = async () => {
        await mkdir(tarOut);
        return settled(() => sh('tar', ['-xzf', layerPath, '-C', tarOut]));
      };
      const tarFirst = i % 2 === 1 ? await tarStep() : undefined;
      const cold = await assemble(home, 'v1', 'erofs', stack1, '--stack');
      const warm = await assemble(home, 'v2', 'erofs', stack2, '--stack');
      const warmResult = onlyHome(warm, 'stacked');
      const singleCold = await assemble(home, 'v1', 'erofs', img1);
      const singleWarm = await assemble(home, 'v2', 'erofs', img2);
      onlyHome(singleWarm, 'single-image');
      const dirCold = await assemble(home, 'v1', 'dir', out1);
      const dirWarm = await assemble(home, 'v2', 'dir', out2);
      const umoci = await settled(() => sh('umoci', ['unpack', '--image', `${umociLayout}:v1`, umociOut]));
      const tar = tarFirst ?? (await tarStep());
      // The floor of any independent folder output: copying the finished tree once.
      const copy = await settled(() => sh('cp', ['-a', '--', tarOut, copyOut]));
      const inHome = await tempDir('cs-bench-home-');
      await sh('cp', ['-al', join(images, 'store'), join(inHome, 'store')]);
      // A file, not \`node -e\`: worker threads inherit --input-type, and the inflate worker is CommonJS.
      await writeFile(join(inHome, 'in-process.mjs'), IN_PROCESS);
      const inProcess = JSON.parse(await sh('node', [join(inHome, 'in-process.mjs'), inHome], { env: cliEnv({ CS_HOME: inHome }), extendEnv: false })) as { cold: number; warm: number };
      results.inCold.push(inProcess.cold);
      results.inWarm.push(inProcess.warm);
      results.csCold.push(cold.ms);
      results.csWarm.push(warm.ms);
      results.singleCold.push(singleCold.ms);
      results.singleWarm.push(singleWarm.ms);
      results.dirCold.push(dirCold.ms);
      results.dirWarm.push(dirWarm.ms);
      results.umoci.push(umoci.ms);
      results.tar.push(tar.ms);
      results.copy.push(copy.ms);
      process.stderr.write(`run ${i + 1}${tarFirst ? ' (tar first)' : ''}: cs cold ${cold.ms.toFixed(0)} ms, cs warm ${warm.ms.toFixed(0)} ms (applied ${warmResult.layersApplied}, cached ${warmResult.cachedLayers}), as one image cold ${singleCold.ms.toFixed(0)} ms warm ${singleWarm.ms.toFixed(0)} ms, as a folder cold ${dirCold.ms.toFixed(0)} ms warm ${dirWarm.ms.toFixed(0)} ms, umoci ${umoci.ms.toFixed(0)} ms, tar -xzf ${tar.ms.toFixed(0)} ms, cp -a of the tree ${copy.ms.toFixed(0)} ms; cold / tar ${(cold.ms / tar.ms).toFixed(2)}; in one process: cold ${inProcess.cold.toFixed(0)} ms, warm ${inProcess.warm.toFixed(0)} ms\n`);
      await removeAll(inHome, home, out1, out2, img1, img2, stack1, stack2, umociOut, tarOut, copyOut);
    }
    const m = { csCold: median(results.csCold), csWarm: median(results.csWarm), singleCold: median(results.singleCold), singleWarm: median(results.singleWarm), dirCold: median(results.dirCold), dirWarm: median(results.dirWarm), umoci: median(results.umoci), tar: median(results.tar), copy: median(results.copy), inCold: median(results.inCold), inWarm: median(results.inWarm) };
    const summary = {
      scenario: 'assemble',
      layerBytes: layer.size,
      runs: RUNS,
      csColdMs: Math.round(m.csCold),
      csWarmMs: Math.round(m.csWarm),
      csSingleImageColdMs: Math.round(m.singleCold),
      csSingleImageWarmMs: Math.round(m.singleWarm),
      csDirColdMs: Math.round(m.dirCold),
      csDirWarmMs: Math.round(m.dirWarm),
      umociUnpackMs: Math.round(m.umoci),
      tarXzfMs: Math.round(m.tar),
      copyTreeMs: Math.round(m.copy),
      ratioColdToTar: Number((m.csCold / m.tar).toFixed(3)),
      ratioColdToTarPerRun: results.csCold.map((c, i) => Number((c / (results.tar[i] ?? c)).toFixed(2))),
      ratioColdToUmoci: Number((m.csCold / m.umoci).toFixed(3)),
      ratioWarmToCold: Number((m.csWarm / m.csCold).toFixed(3)),
      ratioWarmToColdPerRun: results.csWarm.map((w, i) => Number((w / (results.csCold[i] ?? w)).toFixed(3))),
      ratioWarmToTar: Number((m.csWarm / m.tar).toFixed(3)),
      inProcessColdMs: Math.round(m.inCold),
      inProcessWarmMs: Math.round(m.inWarm),
      ratioInProcessWarmToCold: Number((m.inWarm / m.inCold).toFixed(3)),
      ratioSingleColdToTar: Number((m.singleCold / m.tar).toFixed(3)),
      ratioSingleWarmToSingleCold: Number((m.singleWarm / m.singleCold).toFixed(3)),
      ratioDirColdToTar: Number((m.dirCold / m.tar).toFixed(3)),
      ratioDirWarmToDirCold: Number((m.dirWarm / m.dirCold).toFixed(3)),
      ratioCopyToTar: Number((m.copy / m.tar).toFixed(3)),
    };
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    process.stdout.write(
      `erofs stack (what workspaces boot from): cs cold / tar -xzf: ${summary.ratioColdToTar} (target <= 1.1); cs warm / cold: ${summary.ratioWarmToCold} (target < 0.15); cs warm / tar -xzf: ${summary.ratioWarmToTar}\n` +
        `erofs stack in one process (a running cs reconcile --watch): warm / cold: ${summary.ratioInProcessWarmToCold} (${summary.inProcessWarmMs} ms / ${summary.inProcessColdMs} ms)\n` +
        `erofs, one self-contained image: cold / tar -xzf: ${summary.ratioSingleColdToTar}; warm / cold: ${summary.ratioSingleWarmToSingleCold} (it copies the base's blocks; no target)\n` +
        `folder: cold / tar -xzf: ${summary.ratioDirColdToTar}; warm / cold: ${summary.ratioDirWarmToDirCold}; cp -a of the tree / tar -xzf: ${summary.ratioCopyToTar} (the least a folder output costs on top of a cached tree)\n`,
    );
    await memory(work);
  } finally {
    await removeAll(work);
  }
}
