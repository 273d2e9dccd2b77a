import { Flags } from '@oclif/core';
import { startService } from '../service/server.js';
import { UsageError } from '../util/errors.js';
import { parseSize } from '../util/units.js';
import { CsCommand } from './_base.js';

export default class Serve extends CsCommand {
  static override summary = 'Run the cs HTTP API (workspaces, exec, files, jobs, MCP) until stopped.';
  static override description = `Every request needs an API key (\`cs apikey create\`) in \`Authorization: Bearer KEY\`; a key reaches its owner's workspaces only. It listens on loopback unless told otherwise: another address needs --allow-remote and TLS (--tls-cert, --tls-key). The API is described at GET /v1/openapi.json (schemas/service.openapi.json).`;
  static override examples = [
    { description: 'Serve on the default address', command: '<%= config.bin %> <%= command.id %>' },
    { description: 'Serve to the network, over TLS', command: '<%= config.bin %> <%= command.id %> --listen 0.0.0.0:8443 --allow-remote --tls-cert cert.pem --tls-key key.pem' },
  ];
  static override flags = {
    listen: Flags.string({ description: 'HOST:PORT to listen on', default: '127.0.0.1:8080' }),
    'allow-remote': Flags.boolean({ description: 'Allow an address beyond loopback (needs TLS)' }),
    'tls-cert': Flags.string({ description: 'TLS certificate file (PEM)', dependsOn: ['tls-key'] }),
    'tls-key': Flags.string({ description: 'TLS private key file (PEM)', dependsOn: ['tls-cert'] }),
    'max-file-size': Flags.string({ description: 'Largest file served or accepted by the files API', default: '16Mi' }),
  };

  async run(): Promise<{ url: string }> {
    const { flags } = await this.parse(Serve);
    const maxFileBytes = parseSize(flags['max-file-size']);
    if (maxFileBytes === undefined || maxFileBytes <= 0) throw new UsageError(`--max-file-size takes a size like 16Mi, not "${flags['max-file-size']}"`);
    const { serviceRoutes, resumeJobs } = await import('../service/extra.js');
    // Jobs first: a second `cs serve` on this data directory stops here, before it listens.
    const stopJobs = await resumeJobs({ log: (line: string) => this.say(`${new Date().toISOString()} ${line}`) });
    let service: Awaited<ReturnType<typeof startService>>;
    try {
      service = await startService({
        listen: flags.listen,
        allowRemote: flags['allow-remote'],
        ...(flags['tls-cert'] && flags['tls-key'] ? { tls: { cert: flags['tls-cert'], key: flags['tls-key'] } } : {}),
        maxFileBytes,
        routes: await serviceRoutes(),
        log: (line) => this.say(`${new Date().toISOString()} ${line}`),
      });
    } catch (error) {
      await stopJobs();
      throw error;
    }
    this.say(`cs serve: listening on ${service.url} (Ctrl-C to stop)`);
    if (this.jsonEnabled()) process.stdout.write(JSON.stringify({ url: service.url }) + '\n');
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    this.say('cs serve: stopping');
    await stopJobs();
    await service.close();
    return { url: service.url };
  }
}
