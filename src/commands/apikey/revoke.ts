import { Args } from '@oclif/core';
import { revokeKey, type KeyInfo } from '../../service/keys.js';
import { CsCommand } from '../_base.js';

export default class ApikeyRevoke extends CsCommand {
  static override summary = 'Revoke an API key: the next request with it is refused.';
  static override examples = ['<%= config.bin %> <%= command.id %> ci'];
  static override args = { key: Args.string({ description: 'The key\'s name or id', required: true }) };

  async run(): Promise<KeyInfo> {
    const { args } = await this.parse(ApikeyRevoke);
    const key = await revokeKey(args.key);
    this.say(`Revoked API key "${key.name}" (${key.id}).`);
    return key;
  }
}
