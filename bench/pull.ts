import { cp, mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { startRegistry } from '../test/helpers/registry.js';
import { cacheDir, cliEnv, ensureBuilt, median, removeAll, root, sh, tempDir, timed, timedAfterSync } from './common.js';

/**
 * `npm run bench -- pull`: a real multi-layer image (four gzip layers made
 * by umoci from this machine's own files: docs, locales, Python, binaries)
 * is pushed to a local docker-registry with skopeo; then, cold, cs pulls it
 * into an empty store and skopeo copies it into an empty OCI layout, seven
 * times each after an uncounted warm-up round, taking turns going first,
 * each after a `sync`. A second cs pull must transfer no blob bytes.
 */

const SOURCES = ['/usr/share/doc', '/usr/share/locale', '/usr/lib/python3.11', '/usr/bin'];
const RUNS = 7;

async function buildImage(): Promise<string> {
  const layout = join(cacheDir, 'pull-image');
  const marker = join(layout, '.complete');
  if (await stat(marker).then(() => true, () => false)) return layout;
  process.stderr.write('building the benchmark image with umoci (once; cached in .bench-cache/)…\n');
  await removeAll(layout);
  await mkdir(cacheDir, { recursive: true });
  const bundle = await tempDir('cs-bench-bundle-');
  await sh('umoci', ['init', '--layout', layout]);
  await sh('umoci', ['new', '--image', `${layout}:v1`]);
  await removeAll(bundle);
  await sh('umoci', ['unpack', '--rootless', '--image', `${layout}:v1`, bundle]);
  for (const source of SOURCES) {
    const present = await stat(source).then(() => true, () => false);
    if (!present) continue;
    await cp(source, join(bundle, 'rootfs', source), { recursive: true, verbatimSymlinks: true, errorOnExist: false, force: true });
    await sh('umoci', ['repack', '--refresh-bundle', '--image', `${layout}:v1`, bundle]);
  }
  await removeAll(bundle);
  await sh('touch', [marker]);
  return layout;
}

export async function benchPull(): Promise<void> {
  await ensureBuilt();
  const layout = await buildImage();
  const registry = await startRegistry({ mode: 'open' });
  const reference = `${registry.host}/bench/pull:v1`;
  try {
    await sh('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${reference}`]);
    const inspect = JSON.parse(await sh('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${reference}`])) as { layers: { size: number }[] };
    const totalBytes = inspect.layers.reduce((sum, l) => sum + l.size, 0);
    process.stderr.write(`image: ${inspect.layers.length} layers, ${(totalBytes / 1e6).toFixed(1)} MB compressed\n`);

    const csTimes: number[] = [];
    const skopeoTimes: number[] = [];
    const warmTimes: number[] = [];
    let warmBytes = -1;
    const pullCs = (home: string) => sh('node', [join(root, 'bin/run.cjs'), 'image', 'pull', reference, '--json'], { env: cliEnv({ CS_HOME: home }), extendEnv: false });
    const copySkopeo = (out: string) => sh('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reference}`, `oci:${join(out, 'layout')}:v1`]);
    // Round 0 is a warm-up, not counted: the registry's first reads of its blobs
    // and the first start of each program would otherwise land on whichever runs first.
    for (let run = 0; run <= RUNS; run++) {
      const home = await tempDir('cs-bench-home-');
      const out = await tempDir('cs-bench-skopeo-');
      try {
        // Each cold run starts with no dirty pages from the one before (both tools fsync what
        // they store), and the two tools take turns going first.
        const csFirst = run % 2 === 0;
        const first = await timedAfterSync(csFirst ? () => pullCs(home) : () => copySkopeo(out));
        const second = await timedAfterSync(csFirst ? () => copySkopeo(out) : () => pullCs(home));
        const [cs, sk] = csFirst ? [first, second] : [second, first];
        const warm = await timed(() => pullCs(home));
        const result = JSON.parse(warm.value) as { bytesCopied: number; blobsCopied: number };
        const line = `cs cold ${cs.ms.toFixed(0)} ms, skopeo cold ${sk.ms.toFixed(0)} ms, cs warm ${warm.ms.toFixed(0)} ms (${result.blobsCopied} blobs, ${result.bytesCopied} bytes)`;
        if (run === 0) {
          process.stderr.write(`warm-up: ${line}\n`);
          continue;
        }
        csTimes.push(cs.ms);
        skopeoTimes.push(sk.ms);
        warmTimes.push(warm.ms);
        warmBytes = Math.max(warmBytes, result.bytesCopied);
        process.stderr.write(`run ${run}: ${line}\n`);
      } finally {
        await removeAll(home, out);
      }
    }
    const csMedian = median(csTimes);
    const skopeoMedian = median(skopeoTimes);
    const summary = {
      scenario: 'pull',
      image: { layers: inspect.layers.length, compressedBytes: totalBytes },
      runs: RUNS,
      csColdMs: Math.round(csMedian),
      skopeoColdMs: Math.round(skopeoMedian),
      ratioCsToSkopeo: Number((csMedian / skopeoMedian).toFixed(3)),
      csWarmMs: Math.round(median(warmTimes)),
      csWarmBytesTransferred: warmBytes,
      csThroughputMBps: Number((totalBytes / 1e6 / (csMedian / 1000)).toFixed(1)),
    };
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    process.stdout.write(`cs/skopeo cold pull ratio: ${summary.ratioCsToSkopeo} (target <= 1.0); warm pull transferred ${warmBytes} bytes (target 0)\n`);
  } finally {
    await registry.stop();
  }
}
