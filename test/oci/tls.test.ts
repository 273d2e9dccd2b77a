/**
 * Both HTTP transports of the registry client over real TLS: node:https
 * (./src/oci/http.ts) and the lean reader (./src/oci/http-lean.ts, whose
 * socket reads into pooled slabs through TLS's `onread`). The server is an
 * in-process https server with a certificate made by openssl for 127.0.0.1.
 *
 * A process trusts an extra CA only through NODE_EXTRA_CA_CERTS, read when
 * node starts, so the client side runs in a child node process given that
 * variable (or not, to see the certificate refused). cs reaches loopback
 * registries over plain HTTP, so `cs image pull` cannot be pointed at this
 * server; the transports are what changed, and they are what runs here.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, ROOT } from '../helpers/cli.js';

const BIG = randomBytes(3 * 1024 * 1024 + 17);
const SMALL = randomBytes(50_000);
const hex = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

let dir: string;
let certPath: string;
let server: Server;
let base: string;

beforeAll(async () => {
  await ensureBuilt('image/pull'); // dist/oci/*.js, which the child imports
  dir = await mkdtemp(join(tmpdir(), 'cs-tls-'));
  certPath = join(dir, 'cert.pem');
  const keyPath = join(dir, 'key.pem');
  await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdin: 'ignore' });
  server = createServer({ key: await readFile(keyPath), cert: await readFile(certPath) }, (req, res) => {
    if (req.url === '/big') {
      res.writeHead(200, { 'Content-Length': BIG.length });
      res.end(BIG);
    } else if (req.url === '/big-chunked') {
      res.writeHead(200); // no length: chunked
      for (let at = 0; at < BIG.length; at += 100_000) res.write(BIG.subarray(at, at + 100_000));
      res.end();
    } else {
      res.writeHead(200, { 'Content-Length': SMALL.length });
      res.end(SMALL);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `https://127.0.0.1:${(server.address() as { port: number }).port}`;
});

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
  await rm(dir, { recursive: true, force: true });
});

/** In a child node with `env`: fetch `paths` through both transports; prints one JSON line per fetch. */
async function fetchInChild(paths: string[], env: Record<string, string>): Promise<{ transport: string; path: string; status?: number; bytes?: number; sha256?: string; error?: string }[]> {
  const script = `
    import { send } from ${JSON.stringify(join(ROOT, 'dist', 'oci', 'http.js'))};
    import { getLean } from ${JSON.stringify(join(ROOT, 'dist', 'oci', 'http-lean.js'))};
    import { createHash } from 'node:crypto';
    for (const path of ${JSON.stringify(paths)}) {
      for (const transport of ['send', 'lean']) {
        const url = new URL(${JSON.stringify(base)} + path);
        try {
          const response = transport === 'send'
            ? await send(url, { method: 'GET', headers: {}, headersTimeoutMs: 10000 })
            : await getLean(url, { headers: {}, headersTimeoutMs: 10000 });
          const hash = createHash('sha256');
          let bytes = 0;
          for await (const chunk of response.body) { hash.update(chunk); bytes += chunk.length; }
          console.log(JSON.stringify({ transport, path, status: response.status, bytes, sha256: hash.digest('hex') }));
        } catch (error) {
          console.log(JSON.stringify({ transport, path, error: String(error.code ?? error.message) }));
        }
      }
    }`;
  const result = await execa(process.execPath, ['--input-type=module', '-e', script], { env, extendEnv: true, stdin: 'ignore', timeout: 60_000 });
  return result.stdout.trim().split('\n').map((line) => JSON.parse(line) as { transport: string; path: string });
}

describe('registry transports over TLS', () => {
  it('deliver every byte through node:https and through the lean reader (fixed length and chunked), trusting a CA named by NODE_EXTRA_CA_CERTS', async () => {
    const results = await fetchInChild(['/big', '/big-chunked', '/small'], { NODE_EXTRA_CA_CERTS: certPath });
    expect(results).toHaveLength(6);
    for (const r of results) {
      const want = r.path === '/small' ? SMALL : BIG;
      expect(r, `${r.transport} ${r.path}`).toMatchObject({ status: 200, bytes: want.length, sha256: hex(want) });
    }
  });

  it('refuses a certificate nobody vouches for, in both transports', async () => {
    const results = await fetchInChild(['/big'], { NODE_EXTRA_CA_CERTS: '' });
    expect(results.map((r) => r.transport)).toEqual(['send', 'lean']);
    for (const r of results) expect(r.error, r.transport).toBe('DEPTH_ZERO_SELF_SIGNED_CERT');
  });
});
