import { Args, Flags } from '@oclif/core';
import { pushImage, type TransferResult } from '../../oci/image.js';
import { formatSize } from '../../util/progress.js';
import { CsCommand } from '../_base.js';
import { transferProgress } from '../_transfer.js';

export default class ImagePush extends CsCommand {
  static override summary = 'Push an image from the local store to a registry.';
  static override description = `Uploads what the registry does not have yet (checked with HEAD), mounts blobs from another repository of the same registry when it can, pushes manifests after their blobs and sets the tag last. DEST defaults to SRC's own name.`;
  static override examples = [
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/team/base:v1',
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000/team/base:v1 registry.example.com/team/base:v1',
    '<%= config.bin %> <%= command.id %> local/base:v1 localhost:5000/base:v1 --chunk-size 8388608',
  ];
  static override args = {
    source: Args.string({ description: 'Image in the local store', required: true }),
    destination: Args.string({ description: 'Where to push (default: the source name)' }),
  };
  static override flags = {
    insecure: Flags.boolean({ description: 'Allow plain HTTP to this registry' }),
    'chunk-size': Flags.integer({ description: 'Upload blobs in chunks of this many bytes (default: one request per blob)', min: 1 }),
  };

  async run(): Promise<TransferResult> {
    const { args, flags } = await this.parse(ImagePush);
    const progress = transferProgress(!this.jsonEnabled());
    try {
      const result = await pushImage({
        source: args.source,
        ...(args.destination ? { destination: args.destination } : {}),
        insecure: flags.insecure,
        ...(flags['chunk-size'] ? { chunkSize: flags['chunk-size'] } : {}),
        onEvent: progress.onEvent,
      });
      progress.finish();
      this.say(`Pushed ${result.reference} (${result.digest}): ${result.blobsCopied} uploaded, ${formatSize(result.bytesCopied)}, ${result.blobsSkipped} already there or mounted`);
      return result;
    } finally {
      progress.finish();
    }
  }
}
