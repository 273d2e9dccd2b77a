import { Args, Flags } from '@oclif/core';
import { parsePlatform } from '../../oci/manifest.js';
import { pullImage, type TransferResult } from '../../oci/image.js';
import { UsageError } from '../../util/errors.js';
import { formatSize } from '../../util/progress.js';
import { CsCommand } from '../_base.js';
import { transferProgress } from '../_transfer.js';

export default class ImagePull extends CsCommand {
  static override summary = 'Pull an image from a registry into the local store.';
  static override description = `Copies the image's manifest, config and layers into the local content store, verifying every byte. Blobs already in the store are not fetched again. From a multi-platform image, only the host's platform (or --platform) is pulled. Registries on loopback are reached over plain HTTP; others need --insecure or an \`insecure: true\` entry in the config file for that.`;
  static override examples = [
    '<%= config.bin %> <%= command.id %> registry.example.com/team/base:2024.06',
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/debian:bookworm --platform linux/arm64',
    '<%= config.bin %> <%= command.id %> oci://localhost:5000/tools@sha256:0123… --json',
  ];
  static override args = { reference: Args.string({ description: 'Image reference: [oci://]HOST[:PORT]/REPO[:TAG][@DIGEST]', required: true }) };
  static override flags = {
    platform: Flags.string({ description: 'OS/ARCH[/VARIANT] to pull from a multi-platform image (default: this host)' }),
    insecure: Flags.boolean({ description: 'Allow plain HTTP to this registry' }),
  };

  async run(): Promise<TransferResult> {
    const { args, flags } = await this.parse(ImagePull);
    const platform = flags.platform === undefined ? undefined : parsePlatform(flags.platform);
    if (flags.platform !== undefined && !platform) throw new UsageError(`--platform must be OS/ARCH[/VARIANT], e.g. linux/amd64, not "${flags.platform}"`);
    const progress = transferProgress(!this.jsonEnabled());
    try {
      const result = await pullImage({ reference: args.reference, insecure: flags.insecure, ...(platform ? { platform } : {}), onEvent: progress.onEvent });
      progress.finish();
      this.say(`Pulled ${result.reference} (${result.digest}): ${result.blobsCopied} blobs, ${formatSize(result.bytesCopied)} transferred, ${result.blobsSkipped} already present`);
      return result;
    } finally {
      progress.finish();
    }
  }
}
