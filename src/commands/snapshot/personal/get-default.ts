import { getPersonalDefault } from '../../../snapshot/manage.js';
import { CsCommand } from '../../_base.js';

export default class SnapshotPersonalGetDefault extends CsCommand {
  static override summary = 'Print your default personal snapshot (applied to your new workspaces), or NONE.';
  static override examples = ['<%= config.bin %> <%= command.id %>'];

  async run(): Promise<{ default: string | null }> {
    await this.parse(SnapshotPersonalGetDefault);
    const result = await getPersonalDefault();
    this.show(result.default ?? 'NONE');
    return result;
  }
}
