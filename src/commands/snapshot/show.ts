import { Args, Flags } from '@oclif/core';
import { formatSize } from '../../util/progress.js';
import { snapshotShow } from '../../workspace/snapshots.js';
import { CsCommand } from '../_base.js';

export default class SnapshotShow extends CsCommand {
  static override summary = 'Show a snapshot: its layers and sizes, where it came from, the includes used, and who uses it.';
  static override examples = ['<%= config.bin %> <%= command.id %> dev-base', '<%= config.bin %> <%= command.id %> my-dotfiles --json', '<%= config.bin %> <%= command.id %> dev --personal'];
  static override args = { name: Args.string({ description: 'Snapshot name', required: true }) };
  static override flags = {
    personal: Flags.boolean({ description: 'Look only at your personal snapshots', exclusive: ['shared'] }),
    shared: Flags.boolean({ description: 'Look only at the shared (base and home) snapshots', exclusive: ['personal'] }),
  };

  async run(): Promise<Awaited<ReturnType<typeof snapshotShow>>> {
    const { args, flags } = await this.parse(SnapshotShow);
    const s = await snapshotShow({ name: args.name, namespace: flags.personal ? 'personal' : flags.shared ? 'shared' : 'any' });
    const from = s.source.home ? `home folder ${s.source.home}` : s.source.workspace ? `workspace ${s.source.workspace}` : s.source.dir ? `folder ${s.source.dir}` : 'unknown';
    const lines = [
      `${s.name}: ${s.kind} snapshot${s.default ? ' (your default)' : ''}`,
      `  image:    ${s.reference}@${s.digest}`,
      `  created:  ${s.created} by ${s.createdBy.user}, from ${from}`,
      `  size:     ${formatSize(s.size)} in ${s.layers} layer${s.layers === 1 ? '' : 's'}`,
    ];
    if (s.base) lines.push(`  extends:  ${s.base}`);
    if (s.pushed) lines.push(`  pushed:   ${s.pushed}`);
    s.layerList.forEach((l, i) => lines.push(`  layer ${i + 1}:  ${l.digest.slice(0, 19)}  ${formatSize(l.size)}${i === s.layerList.length - 1 ? '  (new)' : ''}`));
    if (s.includes) lines.push(`  includes: ${s.includes.join(', ')}`);
    if (s.excludes && s.excludes.length > 0) lines.push(`  excludes: ${s.excludes.join(', ')}`);
    lines.push(`  used by:  ${s.usedBy.length > 0 ? s.usedBy.join(', ') : 'nothing'}`);
    this.show(lines.join('\n'));
    return s;
  }
}
