import { Args, Flags } from '@oclif/core';
import { login, type LoginResult } from '../oci/login.js';
import { UsageError } from '../util/errors.js';
import { CsCommand } from './_base.js';

export default class Login extends CsCommand {
  static override summary = 'Log in to a registry.';
  static override description = `Checks the credentials against the registry, then stores them where docker and podman look ($REGISTRY_AUTH_FILE when set, else $DOCKER_CONFIG/config.json or ~/.docker/config.json, or the credential helper configured there). The password is read from standard input and never printed.`;
  static override examples = [
    'echo "$REGISTRY_PASSWORD" | <%= config.bin %> <%= command.id %> registry.example.com -u ci-bot --password-stdin',
    '<%= config.bin %> <%= command.id %> 127.0.0.1:5000 -u admin --password-stdin < password.txt',
  ];
  static override args = { registry: Args.string({ description: 'Registry host[:port]', required: true }) };
  static override flags = {
    username: Flags.string({ char: 'u', description: 'User name', required: true }),
    'password-stdin': Flags.boolean({ description: 'Read the password from standard input', required: true }),
    insecure: Flags.boolean({ description: 'Allow plain HTTP to this registry' }),
  };

  async run(): Promise<LoginResult> {
    const { args, flags } = await this.parse(Login);
    if (process.stdin.isTTY) throw new UsageError('--password-stdin reads the password from a pipe or file, e.g. `echo "$PASSWORD" | cs login HOST -u USER --password-stdin`');
    let password = '';
    for await (const chunk of process.stdin) password += String(chunk);
    password = password.replace(/\r?\n$/, '');
    const result = await login({ registry: args.registry, username: flags.username, password, insecure: flags.insecure });
    const where = result.storedIn.kind === 'helper' ? `credential helper ${result.storedIn.helper}` : result.storedIn.path;
    this.say(`Login succeeded; credentials for ${result.registry} stored in ${where}`);
    if (result.shadowedBy) this.say(`Warning: ${result.shadowedBy.path ?? result.shadowedBy.helper} also has credentials for ${result.registry} and is read first`);
    return result;
  }
}
