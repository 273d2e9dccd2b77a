import { copyFile, open, readFile } from 'node:fs/promises';
import fc from 'fast-check';
import { LayerError } from '../../src/util/errors.js';

/**
 * Random damage for readers of hostile images: fast-check writes 1 to
 * `maxBytes` random bytes at random places inside `regions` of a copy of
 * `clean` at `path`, runs `read` on it, and puts the bytes back. `read`
 * may succeed or throw a LayerError; anything else (a TypeError, a hang
 * caught by the test's timeout) fails the property. Returns how many runs
 * were read and how many refused.
 */
export async function damageRuns(options: {
  clean: string;
  path: string;
  regions: readonly (readonly [number, number])[];
  maxBytes: number;
  runs: number;
  read: (path: string) => Promise<void>;
}): Promise<{ ok: number; refused: number }> {
  await copyFile(options.clean, options.path);
  const original = await readFile(options.path);
  const change = fc.record({ region: fc.nat(options.regions.length - 1), offset: fc.nat(), value: fc.nat(255) });
  const outcomes = { ok: 0, refused: 0 };
  await fc.assert(
    fc.asyncProperty(fc.array(change, { minLength: 1, maxLength: options.maxBytes }), async (changes) => {
      const fh = await open(options.path, 'r+');
      const touched: number[] = [];
      try {
        for (const c of changes) {
          const [start, end] = options.regions[c.region] as readonly [number, number];
          const at = start + (c.offset % (end - start));
          touched.push(at);
          await fh.write(Buffer.from([c.value]), 0, 1, at);
        }
        try {
          await options.read(options.path);
          outcomes.ok++;
        } catch (error) {
          if (!(error instanceof LayerError)) throw error;
          outcomes.refused++;
        }
      } finally {
        for (const at of touched) await fh.write(original, at, 1, at);
        await fh.close();
      }
    }),
    { numRuns: options.runs, seed: 20240601 },
  );
  return outcomes;
}
