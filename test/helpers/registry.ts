/**
 * A real OCI registry for tests.
 *
 * Tests of cs's registry client talk to a real registry process (Debian's
 * `docker-registry`, CNCF distribution 2.8) rather than a mock, so protocol
 * details (upload sessions, digests, auth challenges) are those of real
 * software. Each call to startRegistry() starts its own process on a free
 * loopback port with its own temporary storage, in one of three auth modes:
 * open, HTTP Basic (htpasswd) or Bearer tokens.
 *
 * For token mode the token issuer is ours, running in-process: no issuer
 * ships in Debian. It is the one piece here standing in for an external
 * service (Docker Hub's auth.docker.io, a GitLab/Harbor token endpoint...).
 * It mints RS256 JWTs carrying an x5c chain that the registry verifies
 * against the per-registry `rootcertbundle`.
 */
import { createSign, randomBytes, X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';

export type RegistryAuthMode = 'open' | 'basic' | 'token';

export interface TestRegistry {
  /** '127.0.0.1:PORT' */
  host: string;
  /** 'http://127.0.0.1:PORT' */
  url: string;
  /** The registry's storage root folder. */
  storage: string;
  mode: RegistryAuthMode;
  /** Basic and token modes: the one valid user (also valid at the token issuer). */
  username?: string;
  password?: string;
  /** Token mode: URL of the token issuer (the realm of the Bearer challenge). */
  tokenRealm?: string;
  /** Token mode: how many requests the token issuer has served (0 in other modes). */
  tokenRequests: () => number;
  /** Kills the process, waits for it to exit, stops the issuer and removes the temp dir. */
  stop(): Promise<void>;
}

export interface StartRegistryOptions {
  mode?: RegistryAuthMode;
  /** `storage.delete.enabled`; true by default. */
  deleteEnabled?: boolean;
}

const BINARY = 'docker-registry';
const READY_TIMEOUT_MS = 10_000;
const KILL_GRACE_MS = 3_000;
const PORT_ATTEMPTS = 5;
const STDERR_TAIL = 4_000;

/** Token mode: the `service` (JWT audience) and `issuer` the registry expects. */
export const TOKEN_SERVICE = 'cs-test-registry';
export const TOKEN_ISSUER = 'cs-test-issuer';

export async function startRegistry(options: StartRegistryOptions = {}): Promise<TestRegistry> {
  const mode = options.mode ?? 'open';
  const deleteEnabled = options.deleteEnabled ?? true;
  const dir = await mkdtemp(join(tmpdir(), 'cs-registry-'));
  const storage = join(dir, 'storage');
  let issuer: TokenIssuer | undefined;
  try {
    await mkdir(storage);
    const username = 'cs-test';
    const password = randomBytes(12).toString('hex');
    let auth: Record<string, unknown> | undefined;
    if (mode === 'basic') {
      const htpasswdPath = join(dir, 'htpasswd');
      const { stdout } = await execa('htpasswd', ['-Bbn', username, password], { stdin: 'ignore' });
      await writeFile(htpasswdPath, `${stdout.trim()}\n`);
      auth = { htpasswd: { realm: 'cs-test-registry', path: htpasswdPath } };
    } else if (mode === 'token') {
      const keyPath = join(dir, 'issuer-key.pem');
      const certPath = join(dir, 'issuer-cert.pem');
      await execa(
        'openssl',
        ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', `/CN=${TOKEN_ISSUER}`],
        { stdin: 'ignore' },
      );
      const [keyPem, certPem] = await Promise.all([readFile(keyPath, 'utf8'), readFile(certPath, 'utf8')]);
      issuer = await startTokenIssuer({ keyPem, certPem, username, password });
      auth = { token: { realm: issuer.realm, service: TOKEN_SERVICE, issuer: TOKEN_ISSUER, rootcertbundle: certPath } };
    }

    const expectedStatus = mode === 'open' ? 200 : 401;
    const configPath = join(dir, 'config.yml');
    let lastError: Error | undefined;
    for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
      const port = await freePort();
      const host = `127.0.0.1:${port}`;
      const config = {
        version: 0.1,
        log: { level: 'error', accesslog: { disabled: true }, formatter: 'text' },
        storage: {
          filesystem: { rootdirectory: storage },
          delete: { enabled: deleteEnabled },
          redirect: { disable: true },
          maintenance: { uploadpurging: { enabled: false } },
        },
        http: { addr: host, secret: randomBytes(16).toString('hex') },
        ...(auth ? { auth } : {}),
      };
      // YAML is a superset of JSON.
      await writeFile(configPath, `${JSON.stringify(config, null, 2)}\n`);
      const proc = spawnRegistry(configPath);
      const ready = await waitReady(proc, `http://${host}/v2/`, expectedStatus);
      if (ready === 'ready') {
        const url = `http://${host}`;
        const tokenIssuer = issuer;
        let stopped: Promise<void> | undefined;
        const registry: TestRegistry = {
          host,
          url,
          storage,
          mode,
          tokenRequests: () => tokenIssuer?.requests() ?? 0,
          stop: () => (stopped ??= (async () => {
            try {
              await killProcess(proc);
              await tokenIssuer?.close();
            } finally {
              await rm(dir, { recursive: true, force: true });
            }
          })()),
        };
        if (mode !== 'open') {
          registry.username = username;
          registry.password = password;
        }
        if (tokenIssuer) registry.tokenRealm = tokenIssuer.realm;
        return registry;
      }
      await killProcess(proc);
      const tail = proc.stderrTail();
      lastError = new Error(
        `docker-registry did not come up on ${host} (${ready}); stderr tail:\n${tail || '(empty)'}`,
      );
      if (!/address already in use/i.test(tail)) break;
    }
    throw lastError ?? new Error('docker-registry did not start');
  } catch (error) {
    await issuer?.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

// ---------------------------------------------------------------------------
// The registry process

interface RegistryProcess {
  /** Resolves (never rejects) once the process has exited. */
  done: Promise<void>;
  exited: () => boolean;
  kill: (signal: NodeJS.Signals) => void;
  stderrTail: () => string;
}

function spawnRegistry(configPath: string): RegistryProcess {
  // REGISTRY_* variables override the config file; keep them out.
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('REGISTRY_')) env[key] = value;
  }
  const subprocess = execa(BINARY, ['serve', configPath], {
    env,
    extendEnv: false,
    stdin: 'ignore',
    stdout: 'ignore',
    stderr: 'pipe',
    buffer: false,
    reject: false,
    // Killed if the test process exits or crashes.
    cleanup: true,
    // kill('SIGTERM') is followed by SIGKILL if the process is still there.
    forceKillAfterDelay: KILL_GRACE_MS,
  });
  let tail = '';
  let exited = false;
  subprocess.stderr.setEncoding('utf8');
  subprocess.stderr.on('data', (chunk: string) => {
    tail = (tail + chunk).slice(-STDERR_TAIL);
  });
  const done = subprocess.then(
    () => { exited = true; },
    () => { exited = true; },
  );
  return {
    done,
    exited: () => exited,
    kill: (signal) => { subprocess.kill(signal); },
    stderrTail: () => tail,
  };
}

async function waitReady(proc: RegistryProcess, url: string, expected: number): Promise<string> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (proc.exited()) return 'process exited';
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await response.body?.cancel();
      if (response.status === expected) return 'ready';
      last = `GET /v2/ answered ${response.status}, expected ${expected}`;
    } catch (error) {
      last = `GET /v2/ failed: ${(error as Error).message}`;
    }
    await sleep(20);
  }
  return `timed out after ${READY_TIMEOUT_MS} ms, ${last}`;
}

async function killProcess(proc: RegistryProcess): Promise<void> {
  if (!proc.exited()) proc.kill('SIGTERM');
  await proc.done;
}

/** A port that was free on 127.0.0.1 a moment ago. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createNetServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close((error) => (error ? reject(error) : resolve(port)));
    });
  });
}

// ---------------------------------------------------------------------------
// The token issuer (Docker registry token auth spec, GET and OAuth2 POST)

interface TokenIssuer {
  realm: string;
  requests: () => number;
  close: () => Promise<void>;
}

interface AccessEntry {
  type: string;
  name: string;
  actions: string[];
}

async function startTokenIssuer(options: {
  keyPem: string;
  certPem: string;
  username: string;
  password: string;
}): Promise<TokenIssuer> {
  const x5c = new X509Certificate(options.certPem).raw.toString('base64');
  let count = 0;

  const mint = (account: string | undefined, service: string, access: AccessEntry[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'JWT', x5c: [x5c] };
    const claims = {
      iss: TOKEN_ISSUER,
      sub: account ?? '',
      aud: service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(16).toString('hex'),
      access,
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const signature = createSign('RSA-SHA256').update(input).sign(options.keyPem);
    return `${input}.${signature.toString('base64url')}`;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const reqUrl = new URL(req.url ?? '/', 'http://issuer');
    if (reqUrl.pathname !== '/token') return sendJson(res, 404, { error: 'not_found' });
    count++;

    let params: URLSearchParams;
    let user: { username: string; password: string } | undefined;
    if (req.method === 'GET') {
      params = reqUrl.searchParams;
    } else if (req.method === 'POST') {
      params = new URLSearchParams(await readBody(req));
      const grantType = params.get('grant_type');
      if (grantType !== 'password') {
        return sendJson(res, 400, { error: 'unsupported_grant_type', error_description: `grant_type ${grantType ?? '(none)'}` });
      }
      user = { username: params.get('username') ?? '', password: params.get('password') ?? '' };
    } else {
      return sendJson(res, 405, { error: 'method_not_allowed' });
    }
    user ??= parseBasic(req.headers.authorization);

    let authenticated = false;
    if (user) {
      if (user.username !== options.username || user.password !== options.password) {
        res.setHeader('WWW-Authenticate', 'Basic realm="cs-test-issuer"');
        return sendJson(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'invalid username or password' }] });
      }
      authenticated = true;
    }

    const service = params.get('service') ?? TOKEN_SERVICE;
    const scopes = params.getAll('scope').flatMap((s) => s.split(' ')).filter((s) => s !== '');
    // Anonymous callers get a valid token that grants nothing.
    const access = authenticated ? scopes.map(parseScope).filter((a): a is AccessEntry => a !== undefined) : [];
    const token = mint(authenticated ? user?.username : params.get('account') ?? undefined, service, access);
    return sendJson(res, 200, {
      token,
      access_token: token,
      expires_in: 300,
      issued_at: new Date().toISOString(),
      ...(scopes.length > 0 ? { scope: scopes.join(' ') } : {}),
    });
  };

  const server: Server = createHttpServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: String(error) });
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  server.unref();
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;

  return {
    realm: `http://127.0.0.1:${port}/token`,
    requests: () => count,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** `repository:name/with/slashes:pull,push` → access entry (resource names may not contain ':' but types like `repository(plugin)` do not either). */
function parseScope(scope: string): AccessEntry | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last <= first) return undefined;
  const actions = scope
    .slice(last + 1)
    .split(',')
    .filter((a) => a !== '');
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions };
}

function parseBasic(header: string | undefined): { username: string; password: string } | undefined {
  const match = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!match?.[1]) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function b64url(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64url');
}
