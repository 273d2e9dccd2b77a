import { Args, Flags } from '@oclif/core';
import type { CreateSnapshotResult } from '../../snapshot/create.js';
import { formatSize } from '../../util/progress.js';
import { snapshotCreate } from '../../workspace/snapshots.js';
import { CsCommand } from '../_base.js';

export default class SnapshotCreate extends CsCommand {
  static override summary = 'Create a base, home or personal snapshot.';
  static override description = `A base snapshot is the workspace's base image plus one new layer of the files changed in its root filesystem (deletions as whiteouts), without /home and the runtime folders. It comes from a workspace, running or stopped (-W, or the one named by $CS_SANDBOX and $CS_WORKSPACE, which cs sets in every workspace), or from a folder (--from-dir, on top of --parent).

A home snapshot is one layer of the paths listed in $HOME/.snapshot/includes.txt (as tar -T) minus the patterns of $HOME/.snapshot/excludes.txt (as tar -X, globs allowed), taken from your home folder here, or with -W from the home folder of a running workspace; it lands under the workspace owner's home, owned by the owner. A personal snapshot is the same from ~/.snapshot.personal/, is visible only to you, and your first one becomes your default (applied to your new workspaces).

Base and home snapshots share one namespace; personal names are yours alone. Names are 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, unique whatever their case. With snapshot_registry in the config, base and home snapshots are pushed there too.`;
  static override examples = [
    '<%= config.bin %> <%= command.id %> dev-base -W demo/dev',
    '<%= config.bin %> <%= command.id %> ci-base --from-dir ./rootfs-changes --parent localhost/debian:bookworm',
    '<%= config.bin %> <%= command.id %> --home team-home',
    '<%= config.bin %> <%= command.id %> --home team-home -W demo/dev -f',
    '<%= config.bin %> <%= command.id %> --personal my-dotfiles --set-personal-default',
    '<%= config.bin %> <%= command.id %> dev-base -W demo/dev -f --json',
  ];
  static override args = { name: Args.string({ description: 'Snapshot name', required: true }) };
  static override flags = {
    workspace: Flags.string({ char: 'W', description: 'Workspace to snapshot (SANDBOX/WORKSPACE); for --home and --personal, whose home folder' }),
    home: Flags.boolean({ description: 'Create a home snapshot', exclusive: ['personal'] }),
    personal: Flags.boolean({ description: 'Create a personal snapshot', exclusive: ['home'] }),
    'set-personal-default': Flags.boolean({ description: 'Make this personal snapshot your default' }),
    'from-dir': Flags.string({ description: 'Make a base snapshot from this folder (its contents are the new layer)' }),
    parent: Flags.string({ description: 'With --from-dir: the base snapshot name or image the layer goes on' }),
    force: Flags.boolean({ char: 'f', description: 'Replace a snapshot of the same name' }),
  };

  async run(): Promise<CreateSnapshotResult> {
    const { args, flags } = await this.parse(SnapshotCreate);
    const kind = flags.home ? 'home' : flags.personal ? 'personal' : 'base';
    const result = await snapshotCreate({
      name: args.name,
      kind,
      ...(flags.workspace ? { workspace: flags.workspace } : {}),
      ...(flags['from-dir'] ? { fromDir: flags['from-dir'] } : {}),
      ...(flags.parent ? { parent: flags.parent } : {}),
      ...(flags.force ? { force: true } : {}),
      ...(flags['set-personal-default'] ? { setPersonalDefault: true } : {}),
      onPhase: (p) => this.say(`… ${p}`),
    });
    const what = result.unchanged ? 'unchanged' : result.replaced ? 'replaced' : 'created';
    this.say(
      `Snapshot ${result.name} (${result.kind}) ${what}: ${result.layers} layer${result.layers === 1 ? '' : 's'}, new layer ${formatSize(result.layerSize)}, ${result.seconds.toFixed(2)} s` +
        (result.parent ? `; extends ${result.parent}` : '') +
        (result.isDefault ? '; your default personal snapshot' : '') +
        (result.pushed ? `; pushed to ${result.pushed}` : ''),
    );
    this.show(result.digest);
    return result;
  }
}
