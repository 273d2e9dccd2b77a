import type { TransferResult } from '../../oci/image.js';
import type { Hot } from '../_lean.js';
import type { CommandIo, CommandSpec, FlagValues } from '../_spec.js';

/** `cs image pull`, described once for oclif and for the lean start (see _spec.ts). */
export const spec = {
  summary: 'Pull an image from a registry into the local store.',
  description: `Copies the image's manifest, config and layers into the local content store, verifying every byte. Blobs already in the store are not fetched again. From a multi-platform image, only the host's platform (or --platform) is pulled. Registries on loopback are reached over plain HTTP; others need --insecure or an \`insecure: true\` entry in the config file for that.`,
  examples: [
    '<%= config.bin %> <%= command.id %> registry.example.com/team/base:2024.06',
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/debian:bookworm --platform linux/arm64',
    '<%= config.bin %> <%= command.id %> oci://localhost:5000/tools@sha256:0123… --json',
  ],
  args: { reference: { description: 'Image reference: [oci://]HOST[:PORT]/REPO[:TAG][@DIGEST]', required: true } },
  flags: {
    platform: { type: 'string', description: 'OS/ARCH[/VARIANT] to pull from a multi-platform image (default: this host)' },
    insecure: { type: 'boolean', description: 'Allow plain HTTP to this registry' },
  },
} as const satisfies CommandSpec;

export async function run(flags: FlagValues<typeof spec>, reference: string, io: CommandIo): Promise<TransferResult> {
  const [{ parsePlatform }, { pullImage }, { UsageError }, { formatSize }, { transferProgress }] = await Promise.all([
    import('../../oci/manifest.js'),
    import('../../oci/image.js'),
    import('../../util/errors.js'),
    import('../../util/progress.js'),
    import('../_transfer.js'),
  ]);
  const platform = flags.platform === undefined ? undefined : parsePlatform(flags.platform);
  if (flags.platform !== undefined && !platform) throw new UsageError(`--platform must be OS/ARCH[/VARIANT], e.g. linux/amd64, not "${flags.platform}"`);
  const progress = transferProgress(!io.json);
  try {
    const result = await pullImage({ reference, insecure: flags.insecure ?? false, ...(platform ? { platform } : {}), onEvent: progress.onEvent });
    progress.finish();
    io.say(`Pulled ${result.reference} (${result.digest}): ${result.blobsCopied} blobs, ${formatSize(result.bytesCopied)} transferred, ${result.blobsSkipped} already present`);
    return result;
  } finally {
    progress.finish();
  }
}

/** For the lean start (see _lean.ts). */
export const hot: Hot = { words: ['image', 'pull'], spec, run: async (p, io) => ({ result: await run(p.flags as FlagValues<typeof spec>, p.args['reference'] as string, io), exitCode: 0 }) };
