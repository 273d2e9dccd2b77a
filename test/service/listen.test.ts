/**
 * `cs serve` is secure by default: loopback only unless told, and beyond
 * loopback only over TLS (a real certificate made with openssl, a real
 * HTTPS request). API key commands: scopes checked, the key shown once.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { get } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, runCs, startCs } from '../helpers/cli.js';

describe('cs serve: where it listens, and API keys', () => {
  let home: string;
  let env: Record<string, string>;

  beforeAll(async () => {
    await ensureBuilt('serve');
    home = await mkdtemp(join(tmpdir(), 'cs-serve-'));
    env = { ...(process.env as Record<string, string>), CS_HOME: home, CS_CONFIG: join(home, 'config.yaml') };
  });
  afterAll(async () => {
    await rm(home, { recursive: true, force: true });
  });

  it('refuses an address beyond loopback without --allow-remote, and without TLS', async () => {
    const open = await runCs(['serve', '--listen', '0.0.0.0:0'], { env });
    expect(open.exitCode).toBe(2);
    expect(open.stderr).toContain('--allow-remote');
    const plain = await runCs(['serve', '--listen', '0.0.0.0:0', '--allow-remote'], { env });
    expect(plain.exitCode).toBe(2);
    expect(plain.stderr).toContain('needs TLS');
    const bad = await runCs(['serve', '--listen', 'somewhere'], { env });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain('HOST:PORT');
  });

  it('serves HTTPS beyond loopback with a certificate', async () => {
    const cert = join(home, 'cert.pem');
    const key = join(home, 'key.pem');
    await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    const served = startCs(['serve', '--listen', '0.0.0.0:0', '--allow-remote', '--tls-cert', cert, '--tls-key', key], { env, timeoutMs: 60_000 });
    try {
      let log = '';
      served.stderr?.on('data', (c: Buffer) => (log += c.toString()));
      for (let i = 0; i < 200 && !/listening on https:\/\/0\.0\.0\.0:(\d+)/.test(log); i++) await new Promise((r) => setTimeout(r, 50));
      const port = Number(/listening on https:\/\/0\.0\.0\.0:(\d+)/.exec(log)?.[1]);
      expect(port, log).toBeGreaterThan(0);
      const ca = await readFile(cert);
      const fetchTls = (path: string): Promise<{ status: number; body: string }> =>
        new Promise((resolve, reject) => {
          get({ host: '127.0.0.1', port, path, ca }, (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString()));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          }).on('error', reject);
        });
      const doc = await fetchTls('/v1/openapi.json');
      expect(doc.status).toBe(200);
      expect(JSON.parse(doc.body).openapi).toBe('3.1.0');
      expect((await fetchTls('/v1/workspaces')).status).toBe(401);
    } finally {
      served.kill('SIGINT');
      await served.catch(() => undefined);
    }
  }, 60_000);

  it('apikey: scopes are checked, the key is printed once and only its hash is kept, revoke by name', async () => {
    const wrong = await runCs(['apikey', 'create', '--name', 'x', '--scope', 'root'], { env });
    expect(wrong.exitCode).toBe(2);
    expect(wrong.stderr).toContain('unknown scope "root"');
    const made = await runCs(['apikey', 'create', '--name', 'ci', '--scope', 'exec,files'], { env });
    expect(made.exitCode).toBe(0);
    const token = made.stdout.trim();
    expect(token).toMatch(/^csk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
    const stored = await readFile(join(home, 'service', 'keys.json'), 'utf8');
    // The secret is everything after the id (it may hold '_' itself).
    expect(stored).not.toContain(token.slice('csk_'.length + 13));
    const again = await runCs(['apikey', 'create', '--name', 'ci', '--scope', 'exec'], { env });
    expect(again.exitCode).toBe(3);
    const list = JSON.parse((await runCs(['apikey', 'list', '--json'], { env })).stdout) as { keys: { name: string; scopes: string[]; hash?: string }[] };
    expect(list.keys).toEqual([expect.objectContaining({ name: 'ci', scopes: ['exec', 'files'] })]);
    expect(list.keys[0]?.hash).toBeUndefined();
    expect((await runCs(['apikey', 'revoke', 'ci'], { env })).exitCode).toBe(0);
    expect((await runCs(['apikey', 'revoke', 'ci'], { env })).exitCode).toBe(3);
  });
});
