import type { AssembleResult } from '../../rootfs/assemble.js';
import type { Hot } from '../_lean.js';
import type { CommandIo, CommandSpec, FlagValues } from '../_spec.js';

/** `cs rootfs assemble`, described once for oclif and for the lean start (see _spec.ts). */
export const spec = {
  summary: "Assemble a root filesystem from a workspace's snapshots or from images.",
  description: `Applies the layers of the base snapshot, then the home and personal snapshots (under the owner's home), in order, and writes the result as a folder, a tar, an erofs image or an ext4 image. Finished trees are cached by chain id, so when only the top snapshot changes only its layers are applied again. A base snapshot's runtime folders (${['/proc', '/sys', '/dev', '/run', '/tmp'].join(', ')}) are emptied. An erofs image (what workspaces boot from) is built straight from the layers without creating their files on the host, and is the fastest output. A folder output is a full copy of the cached tree (its files are never shared with the cache, so editing it changes nothing else): on file systems without reflinks (ext4) every file is created again, so a folder costs a good part of what extracting did even when the tree is cached; tar and ext4 images are read from the cache. With --stack, an erofs output is a folder with one image per snapshot (0-base.erofs, 1-home.erofs, 2-personal.erofs), to be stacked with overlayfs, the highest number on top (lowerdir=2:1:0); this is what workspaces boot from: the base's image is shared, not copied, so when only the home snapshot changed only its image is written. The images are hardlinks of cs's cache and read-only: copy one before changing it.`,
  examples: [
    '<%= config.bin %> <%= command.id %> -f examples/minimal.yaml -W minimal/dev --format erofs --out /tmp/dev.erofs',
    '<%= config.bin %> <%= command.id %> --base localhost:5000/debian:bookworm --home localhost:5000/team-home:v1 --format dir --out /tmp/root',
    '<%= config.bin %> <%= command.id %> --base localhost/debian:bookworm --format tar --out root.tar --json',
    '<%= config.bin %> <%= command.id %> -f examples/minimal.yaml -W minimal/dev --format erofs --stack --out /tmp/dev-stack',
  ],
  flags: {
    file: { type: 'string', char: 'f', description: 'Sandbox definition file' },
    workspace: { type: 'string', char: 'W', description: 'SANDBOX/WORKSPACE in the definition (with -f)' },
    base: { type: 'string', description: 'Base snapshot: a name from the catalogue or an image (instead of -f/-W)' },
    home: { type: 'string', description: "Home snapshot (name or image), applied under the owner's home" },
    personal: { type: 'string', description: "Personal snapshot (one of yours, or an image), applied last under the owner's home" },
    format: { type: 'string', description: 'Output format', options: ['dir', 'tar', 'erofs', 'ext4'], default: 'dir' },
    out: { type: 'string', char: 'o', description: 'Where to write the result', required: true },
    force: { type: 'boolean', description: 'Replace --out if it exists' },
    stack: { type: 'boolean', description: 'erofs: one image per snapshot in the folder --out, for overlayfs to stack' },
  },
} as const satisfies CommandSpec;

export async function run(flags: FlagValues<typeof spec>, io: CommandIo): Promise<AssembleResult> {
  const [{ assembleFromFlags }, { ensurePersonalDir }, { resolveForAssemble }] = await Promise.all([
    import('../../rootfs/from-definition.js'),
    import('../../snapshot/catalogue.js'),
    import('../../snapshot/resolve.js'),
  ]);
  const result = await assembleFromFlags({
    ...flags,
    onPhase: (p) => io.say(p),
    resolve: (what, kind) => resolveForAssemble(what, kind),
    privateDir: () => ensurePersonalDir(),
  });
  if (result.lowers && flags.stack) {
    const names = result.lowers.map((file) => file.slice(file.lastIndexOf('/') + 1));
    io.say(`Wrote ${names.length} erofs ${names.length === 1 ? 'image' : 'images'} to ${result.out} (${names.join(', ')}: overlayfs's lowerdir order, top first): ${result.layers} ${result.layers === 1 ? 'layer' : 'layers'}, ${result.layersApplied} applied, ${result.cachedLayers} from cache`);
    return result;
  }
  io.say(`Wrote ${result.format} to ${result.out}: ${result.layers} ${result.layers === 1 ? 'layer' : 'layers'}, ${result.layersApplied} applied, ${result.cachedLayers} from cache`);
  return result;
}

/** For the lean start (see _lean.ts). */
export const hot: Hot = { words: ['rootfs', 'assemble'], spec, run: async (p, io) => ({ result: await run(p.flags as FlagValues<typeof spec>, io), exitCode: 0 }) };
