import { Flags } from '@oclif/core';
import { listSnapshotSummaries, type SnapshotSummary } from '../../snapshot/manage.js';
import { UsageError } from '../../util/errors.js';
import { formatSize } from '../../util/progress.js';
import { CsCommand } from '../_base.js';
import { table } from '../_table.js';

const COLUMNS: Record<string, { title: string; value: (s: SnapshotSummary) => string }> = {
  name: { title: 'NAME', value: (s) => s.name },
  type: { title: 'TYPE', value: (s) => s.kind },
  size: { title: 'SIZE', value: (s) => formatSize(s.size) },
  layers: { title: 'LAYERS', value: (s) => String(s.layers) },
  created: { title: 'CREATED', value: (s) => s.created.replace(/\.\d+Z$/, 'Z') },
  base: { title: 'BASE', value: (s) => s.base ?? '' },
  default: { title: 'DEFAULT', value: (s) => (s.default ? '*' : '') },
  digest: { title: 'DIGEST', value: (s) => s.digest.slice(0, 19) },
  pushed: { title: 'PUSHED', value: (s) => s.pushed ?? '' },
};
const DEFAULT_COLUMNS = 'name,type,size,created,base,default';

export default class SnapshotList extends CsCommand {
  static override summary = 'List the snapshots you can use: the shared base and home snapshots, and your personal ones.';
  static override aliases = ['snapshot:ls'];
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> -c name,type,digest', '<%= config.bin %> <%= command.id %> --json'];
  static override flags = {
    columns: Flags.string({ char: 'c', description: `Columns to show, comma-separated (${Object.keys(COLUMNS).join(', ')})`, default: DEFAULT_COLUMNS }),
  };

  async run(): Promise<{ snapshots: SnapshotSummary[] }> {
    const { flags } = await this.parse(SnapshotList);
    const names = flags.columns.split(',').map((c) => c.trim().toLowerCase()).filter((c) => c !== '');
    const unknown = names.filter((c) => !COLUMNS[c]);
    if (unknown.length > 0) throw new UsageError(`unknown column${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}; choose from ${Object.keys(COLUMNS).join(', ')}`);
    const snapshots = await listSnapshotSummaries();
    if (snapshots.length === 0) this.show('No snapshots. Create one with `cs snapshot create NAME -W SANDBOX/WORKSPACE` (or --home, --personal).');
    else {
      const columns = names.map((n) => COLUMNS[n] as (typeof COLUMNS)[string]);
      this.show(table(columns.map((c) => c.title), snapshots.map((s) => columns.map((c) => c.value(s)))));
    }
    return { snapshots };
  }
}
