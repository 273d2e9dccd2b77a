import { listKeys, type KeyInfo } from '../../service/keys.js';
import { CsCommand } from '../_base.js';
import { table } from '../_table.js';

export default class ApikeyList extends CsCommand {
  static override summary = 'List the API keys of `cs serve` (never the keys themselves).';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];

  async run(): Promise<{ keys: KeyInfo[] }> {
    await this.parse(ApikeyList);
    const keys = await listKeys();
    this.show(keys.length === 0 ? 'No API keys. Make one with `cs apikey create --name NAME --scope all`.' : table(['ID', 'NAME', 'OWNER', 'SCOPES', 'CREATED', 'REVOKED'], keys.map((k) => [k.id, k.name, k.owner, k.scopes.join(','), k.createdAt, k.revokedAt ?? ''])));
    return { keys };
  }
}
