import { Flags } from '@oclif/core';
import { assembleFromFlags } from '../../rootfs/from-definition.js';
import type { AssembleResult } from '../../rootfs/assemble.js';
import { ensurePersonalDir } from '../../snapshot/catalogue.js';
import { resolveForAssemble } from '../../snapshot/resolve.js';
import { CsCommand } from '../_base.js';

export default class RootfsAssemble extends CsCommand {
  static override summary = 'Assemble a root filesystem from a workspace\'s snapshots or from images.';
  static override description = `Applies the layers of the base snapshot, then the home and personal snapshots (under the owner's home), in order, and writes the result as a folder, a tar, an erofs image or an ext4 image. Finished trees are cached by chain id, so when only the top snapshot changes only its layers are applied again. A base snapshot's runtime folders (${['/proc', '/sys', '/dev', '/run', '/tmp'].join(', ')}) are emptied. An erofs image (what workspaces boot from) is built straight from the layers without creating their files on the host, and is the fastest output. A folder output is a full copy of the cached tree (its files are never shared with the cache, so editing it changes nothing else): on file systems without reflinks (ext4) every file is created again, so a folder costs a good part of what extracting did even when the tree is cached; tar and ext4 images are read from the cache.`;
  static override examples = [
    '<%= config.bin %> <%= command.id %> -f examples/minimal.yaml -W minimal/dev --format erofs --out /tmp/dev.erofs',
    '<%= config.bin %> <%= command.id %> --base localhost:5000/debian:bookworm --home localhost:5000/team-home:v1 --format dir --out /tmp/root',
    '<%= config.bin %> <%= command.id %> --base localhost/debian:bookworm --format tar --out root.tar --json',
  ];
  static override flags = {
    file: Flags.string({ char: 'f', description: 'Sandbox definition file' }),
    workspace: Flags.string({ char: 'W', description: 'SANDBOX/WORKSPACE in the definition (with -f)' }),
    base: Flags.string({ description: 'Base snapshot: a name from the catalogue or an image (instead of -f/-W)' }),
    home: Flags.string({ description: 'Home snapshot (name or image), applied under the owner\'s home' }),
    personal: Flags.string({ description: 'Personal snapshot (one of yours, or an image), applied last under the owner\'s home' }),
    format: Flags.string({ description: 'Output format', options: ['dir', 'tar', 'erofs', 'ext4'], default: 'dir' }),
    out: Flags.string({ char: 'o', description: 'Where to write the result', required: true }),
    force: Flags.boolean({ description: 'Replace --out if it exists' }),
  };

  async run(): Promise<AssembleResult> {
    const { flags } = await this.parse(RootfsAssemble);
    const result = await assembleFromFlags({
      ...flags,
      onPhase: (p) => this.say(p),
      resolve: (what, kind) => resolveForAssemble(what, kind),
      privateDir: () => ensurePersonalDir(),
    });
    this.say(`Wrote ${result.format} to ${result.out}: ${result.layers} ${result.layers === 1 ? 'layer' : 'layers'}, ${result.layersApplied} applied, ${result.cachedLayers} from cache`);
    return result;
  }
}
