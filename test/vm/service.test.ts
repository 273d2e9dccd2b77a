/**
 * The service, for real: `cs serve` started on loopback, driven over HTTP
 * with API keys made by `cs apikey create`, running commands and moving
 * files in real microVMs; jobs surviving a kill -9 of the service; and the
 * MCP tool called by the official MCP client library, over HTTP and stdio.
 */
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, ensureBuilt, runCs, startCs, userEnv, type Run } from '../helpers/cli.js';
import { importTinyImage, vmHome } from '../helpers/vm.js';

type Served = ReturnType<typeof startCs>;

describe('cs serve', () => {
  let home: Awaited<ReturnType<typeof vmHome>> | undefined;
  let env: Record<string, string>;
  let image: string;
  let service: Served | undefined;
  let url = '';
  const keys: Record<string, string> = {};
  const cs = (...args: string[]): Promise<Run> => runCs(args, { env, timeoutMs: 300_000 });

  async function serve(): Promise<void> {
    service = startCs(['serve', '--listen', '127.0.0.1:0'], { env, timeoutMs: 900_000 });
    let log = '';
    service.stderr?.on('data', (c: Buffer) => (log += c.toString()));
    for (let i = 0; i < 200 && !/listening on (\S+)/.test(log); i++) await new Promise((r) => setTimeout(r, 50));
    url = /listening on (\S+)/.exec(log)?.[1] ?? '';
    expect(url, log).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  }

  async function key(name: string, scope: string, owner?: string): Promise<string> {
    const made = await cs('apikey', 'create', '--name', name, '--scope', scope, ...(owner ? ['--owner', owner] : []));
    expect(made.exitCode, made.stderr).toBe(0);
    return made.stdout.trim();
  }

  const call = async (who: string | undefined, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { ...(who ? { authorization: `Bearer ${keys[who] ?? who}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    return { status: res.status, json: text.startsWith('{') ? JSON.parse(text) : text };
  };
  const ok = async (who: string, method: string, path: string, body?: unknown): Promise<any> => {
    const { status, json } = await call(who, method, path, body);
    expect(status, JSON.stringify(json)).toBeLessThan(300);
    return json;
  };

  beforeAll(async () => {
    await ensureBuilt('serve');
    home = await vmHome();
    env = home.env;
    image = await importTinyImage(env);
    keys['alice'] = await key('alice', 'all', 'alice');
    keys['bob'] = await key('bob', 'all', 'bob');
    keys['reader'] = await key('reader', 'workspaces:read', 'alice');
    keys['revoked'] = await key('old', 'all', 'alice');
    expect((await cs('apikey', 'revoke', 'old')).exitCode).toBe(0);
    await serve();
    await ok('alice', 'POST', '/v1/workspaces', { name: 'work', image, memory: '256Mi', disk: '512Mi', start: true });
  }, 600_000);

  afterAll(async () => {
    service?.kill('SIGKILL');
    if (home) {
      for (const name of ['work', 'copy']) await cs('workspace', 'remove', name, '--force');
      await home.cleanup();
    }
  }, 300_000);

  it('keys are hashed at rest, and every request is checked: missing, wrong, revoked, out of scope, someone else\'s', async () => {
    const stored = await readFile(join(env['CS_HOME'] as string, 'service', 'keys.json'), 'utf8');
    // Fix: the secret is base64url and may itself hold '_': split('_')[2] then cut it short (once to "9",
    // which the stored file happened to contain). The secret is everything after the id.
    const secret = keys['alice']?.slice('csk_'.length + 13) ?? '';
    expect(secret).toHaveLength(43);
    expect(stored).not.toContain(secret);
    const listed = await cs('apikey', 'list', '--json');
    expect(listed.stdout).not.toContain(keys['alice']);
    expect((await call(undefined, 'GET', '/v1/workspaces')).status).toBe(401);
    expect((await call('csk_000000000000_' + 'x'.repeat(43), 'GET', '/v1/workspaces')).status).toBe(401);
    expect((await call('revoked', 'GET', '/v1/workspaces')).status).toBe(401);
    const scope = await call('reader', 'POST', '/v1/exec', { workspace: 'work', command: 'true' });
    expect(scope).toMatchObject({ status: 403, json: { error: { code: 'FORBIDDEN', message: expect.stringContaining('"exec" scope') } } });
    expect((await ok('reader', 'GET', '/v1/workspaces')).workspaces.map((w: { id: string }) => w.id)).toEqual(['work']);
    // Bob sees none of Alice's: not in his list, and "not found" for each way in.
    expect((await ok('bob', 'GET', '/v1/workspaces')).workspaces).toEqual([]);
    for (const [method, path, body] of [
      ['GET', '/v1/workspaces/work', undefined],
      ['POST', '/v1/exec', { workspace: 'work', command: 'id' }],
      ['GET', '/v1/workspaces/work/fs/read?path=x', undefined],
      ['DELETE', '/v1/workspaces/work', undefined],
    ] as const) {
      expect((await call('bob', method, path, body)).status).toBe(404);
    }
    // Odd requests are the client's mistake, and never take the service down.
    expect((await call('alice', 'GET', '/v1/workspaces/%zz')).status).toBe(400);
    const raw = await new Promise<string>((resolve) => {
      const socket = connect(Number(new URL(url).port), '127.0.0.1', () => socket.end('GET //a:99999/x HTTP/1.1\r\nHost: x\r\n\r\n'));
      let text = '';
      socket.on('data', (c: Buffer) => (text += c.toString()));
      socket.on('close', () => resolve(text));
    });
    expect(raw).toMatch(/^HTTP\/1\.1 400/);
    // Queueing a job runs a command: a key with only the jobs scope cannot.
    keys['jobsonly'] = await key('jobsonly', 'jobs', 'alice');
    expect((await call('jobsonly', 'POST', '/v1/jobs', { kind: 'sandbox.exec', input: { workspace: 'work', command: 'id' } })).status).toBe(403);
    expect((await call('alice', 'GET', '/v1/openapi.json')).json.openapi).toBe('3.1.0');
    expect((await call(undefined, 'GET', '/v1/openapi.json')).status).toBe(200);
  });

  it('exec answers with the exit code and both outputs, truncated past 1 MiB; bad requests are 400', async () => {
    const result = await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'echo out; echo err >&2; echo $GREETING; pwd; exit 7', env: { GREETING: 'hi' } });
    expect(result).toMatchObject({ workspace: 'work', exit_code: 7, stdout: 'out\nhi\n/home/owner\n', stderr: 'err\n', stdout_truncated: false, timed_out: false });
    const big = await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'head -c 1500000 /dev/zero | tr "\\0" a' });
    expect(big.stdout.length).toBe(1024 * 1024);
    expect(big.stdout_truncated).toBe(true);
    const timeout = await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'sleep 30', timeout_ms: 500 });
    expect(timeout.timed_out).toBe(true);
    const both = await call('alice', 'POST', '/v1/exec', { workspace: 'work', image, ephemeral: true, command: 'true' });
    expect(both).toMatchObject({ status: 400, json: { error: { message: expect.stringContaining('not both') } } });
    expect((await call('alice', 'POST', '/v1/exec', { command: 'true' })).status).toBe(400);
  }, 120_000);

  it('exec/stream sends output as it comes, then the exit', async () => {
    const res = await fetch(`${url}/v1/exec/stream`, { method: 'POST', headers: { authorization: `Bearer ${keys['alice']}` }, body: JSON.stringify({ workspace: 'work', command: 'echo one; sleep 0.5; echo two >&2; exit 3' }) });
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const events = [...(await res.text()).matchAll(/event: (\w+)\ndata: (.*)\n\n/g)].map((m) => ({ event: m[1], data: JSON.parse(m[2] as string) }));
    expect(events).toEqual([
      { event: 'workspace', data: { workspace: 'work' } },
      { event: 'stdout', data: { data: 'one\n' } },
      { event: 'stderr', data: { data: 'two\n' } },
      { event: 'exit', data: expect.objectContaining({ exit_code: 3, workspace: 'work' }) },
    ]);
  }, 60_000);

  it('files: binary up and down, listing, the 16 MiB limit, and no way out of the home', async () => {
    const bytes = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 31) % 256));
    const form = new FormData();
    form.append('file', new Blob([bytes]), 'data.bin');
    const up = await fetch(`${url}/v1/workspaces/work/fs/upload?path=up`, { method: 'POST', headers: { authorization: `Bearer ${keys['alice']}` }, body: form });
    expect(up.status, await up.clone().text()).toBe(200);
    const down = await fetch(`${url}/v1/workspaces/work/fs/download?path=up/data.bin`, { headers: { authorization: `Bearer ${keys['alice']}` } });
    expect(Buffer.from(await down.arrayBuffer()).equals(bytes)).toBe(true);
    const read = await ok('alice', 'GET', '/v1/workspaces/work/fs/read?path=up/data.bin');
    expect(read.encoding).toBe('base64');
    expect(Buffer.from(read.content, 'base64').equals(bytes)).toBe(true);
    await ok('alice', 'POST', '/v1/workspaces/work/fs/write', { path: 'notes/hello.txt', content: 'héllo\n' });
    expect((await ok('alice', 'GET', '/v1/workspaces/work/fs/read?path=notes/hello.txt')).content).toBe('héllo\n');
    // Written as the workspace's user.
    expect((await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'stat -c %U notes/hello.txt' })).stdout).toBe('owner\n');
    const listing = await ok('alice', 'GET', '/v1/workspaces/work/fs?path=.');
    expect(listing.entries.map((e: { name: string; type: string }) => `${e.name}:${e.type}`)).toEqual(expect.arrayContaining(['notes:dir', 'up:dir']));
    // The limit: 16 MiB exactly is served, one byte more is a 413.
    await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'head -c 16777216 /dev/urandom > at.bin && head -c 16777217 /dev/zero > over.bin' });
    const at = await fetch(`${url}/v1/workspaces/work/fs/download?path=at.bin`, { headers: { authorization: `Bearer ${keys['alice']}` } });
    expect(at.status).toBe(200);
    expect((await at.arrayBuffer()).byteLength).toBe(16 * 1024 * 1024);
    expect((await call('alice', 'GET', '/v1/workspaces/work/fs/download?path=over.bin')).status).toBe(413);
    // Out of the home: by .., by an absolute path, through a link.
    for (const path of ['../../etc/passwd', '/etc/passwd', '..']) {
      const res = await call('alice', 'GET', `/v1/workspaces/work/fs/read?path=${encodeURIComponent(path)}`);
      expect(res, path).toMatchObject({ status: 400, json: { error: { code: 'BAD_PATH' } } });
    }
    await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'ln -sfn /etc etc-link' });
    expect((await call('alice', 'GET', '/v1/workspaces/work/fs/read?path=etc-link/passwd')).json.error.message).toMatch(/leads outside the workspace's home/);
    expect((await call('alice', 'POST', '/v1/workspaces/work/fs/write', { path: 'etc-link/evil', content: 'x' })).status).toBe(400);
    expect((await call('alice', 'POST', '/v1/workspaces/work/fs/write', { path: '../root/evil', content: 'x' })).status).toBe(400);
  }, 300_000);

  it('workspaces: clone, label, restore points, self-test, usage, delete', async () => {
    const test = await ok('alice', 'POST', '/v1/workspaces/work/self-test');
    expect(test).toMatchObject({ workspace: 'work', user: 'owner', cwd: '/home/owner', kernel: expect.stringMatching(/^\d+\.\d+/), markers: { sandbox: 'work', workspace: 'work', created: true, agent: true } });
    expect(test.path).toContain('/usr/bin');
    expect(test.tools.tar).toBeTruthy();
    await ok('alice', 'POST', '/v1/workspaces/work/label', { label: 'api tests' });
    expect((await ok('alice', 'GET', '/v1/workspaces/work')).label).toBe('api tests');
    await ok('alice', 'POST', '/v1/workspaces/work/restore-points', { name: 'p1' });
    expect((await ok('alice', 'GET', '/v1/workspaces/work/restore-points')).restorePoints.map((p: { name: string }) => p.name)).toEqual(['p1']);
    const usage = await ok('alice', 'GET', '/v1/usage');
    expect(usage.workspaces.map((w: { workspace: string }) => w.workspace)).toEqual(['work']);
    expect((await ok('bob', 'GET', '/v1/usage')).workspaces).toEqual([]);
    // Bob cannot clone Alice's workspace; Alice can, once it is stopped.
    expect((await call('bob', 'POST', '/v1/workspaces', { name: 'stolen', clone_from: 'work' })).status).toBe(404);
    expect((await cs('workspace', 'stop', 'work')).exitCode).toBe(0);
    const copy = await ok('alice', 'POST', '/v1/workspaces', { name: 'copy', clone_from: 'work' });
    expect(copy).toMatchObject({ id: 'copy', owner: 'alice', origin: { clonedFrom: 'work' } });
    expect((await ok('alice', 'DELETE', '/v1/workspaces/copy')).removed).toBe('copy');
    expect((await call('alice', 'GET', '/v1/workspaces/copy')).status).toBe(404);
  }, 300_000);

  it('an ephemeral run is removed afterwards, and when its client goes away mid-command', async () => {
    const result = await ok('alice', 'POST', '/v1/exec', { ephemeral: true, image, command: 'cat /etc/os-release | head -1' });
    expect(result).toMatchObject({ ephemeral: true, exit_code: 0, stdout: expect.stringContaining('cs test image') });
    expect((await call('alice', 'GET', `/v1/workspaces/${result.workspace}`)).status).toBe(404);
    const controller = new AbortController();
    const res = await fetch(`${url}/v1/exec/stream`, { method: 'POST', headers: { authorization: `Bearer ${keys['alice']}` }, body: JSON.stringify({ ephemeral: true, image, command: 'echo started; sleep 120' }), signal: controller.signal });
    const reader = res.body?.getReader();
    let seen = '';
    while (!seen.includes('started')) seen += new TextDecoder().decode((await reader?.read())?.value);
    const name = /"workspace":"([^"]+)"/.exec(seen)?.[1] ?? '';
    expect(name).toMatch(/^ephemeral-/);
    controller.abort();
    let left = true;
    for (let i = 0; i < 120 && left; i++) {
      left = (await cs('workspace', 'list', '--json')).stdout.includes(name);
      if (left) await new Promise((r) => setTimeout(r, 500));
    }
    expect(left).toBe(false);
  }, 300_000);

  it('jobs: a pipeline stops at the first failure, run_at waits, an idempotency key queues one job', async () => {
    const kinds = await ok('alice', 'GET', '/v1/jobs/kinds');
    expect(kinds.kinds.map((k: { kind: string }) => k.kind)).toEqual(['sandbox.exec', 'pipeline.run']);
    const wait = async (id: string): Promise<any> => {
      for (let i = 0; i < 600; i++) {
        const job = await ok('alice', 'GET', `/v1/jobs/${id}`);
        if (job.state !== 'queued' && job.state !== 'running') return job;
        await new Promise((r) => setTimeout(r, 200));
      }
      throw new Error(`job ${id} never ended`);
    };
    const pipeline = await ok('alice', 'POST', '/v1/jobs', { kind: 'pipeline.run', input: { workspace: 'work', steps: [{ command: 'echo a > ~/p.txt' }, { command: 'echo b; exit 4' }, { command: 'echo c >> ~/p.txt' }] } });
    const ran = await wait(pipeline.id);
    expect(ran.state).toBe('failed');
    expect(ran.steps.map((s: { state: string }) => s.state)).toEqual(['succeeded', 'failed', 'skipped']);
    expect(ran.steps[1]).toMatchObject({ exit_code: 4, stdout: 'b\n' });
    expect((await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'cat ~/p.txt' })).stdout).toBe('a\n');
    expect((await call('bob', 'GET', `/v1/jobs/${pipeline.id}`)).status).toBe(404);

    const at = new Date(Date.now() + 3000);
    const later = await ok('alice', 'POST', '/v1/jobs', { kind: 'sandbox.exec', input: { workspace: 'work', command: 'date +%s' }, run_at: at.toISOString() });
    await new Promise((r) => setTimeout(r, 1500));
    expect((await ok('alice', 'GET', `/v1/jobs/${later.id}`)).state).toBe('queued');
    const done = await wait(later.id);
    expect(done.state).toBe('succeeded');
    expect(Date.parse(done.started_at)).toBeGreaterThanOrEqual(at.getTime());

    const same = await Promise.all(Array.from({ length: 8 }, () => call('alice', 'POST', '/v1/jobs', { kind: 'sandbox.exec', input: { workspace: 'work', command: 'echo once >> ~/once.txt' }, idempotency_key: 'deploy-42' })));
    expect(new Set(same.map((r) => r.json.id)).size).toBe(1);
    expect(same.filter((r) => r.status === 201)).toHaveLength(1);
    await wait(same[0]?.json.id);
    expect((await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'cat ~/once.txt' })).stdout).toBe('once\n');
    const bad = await call('alice', 'POST', '/v1/jobs', { kind: 'pipeline.run', input: { workspace: 'work', steps: [] } });
    expect(bad).toMatchObject({ status: 400, json: { error: { message: expect.stringContaining('input.steps') } } });
  }, 300_000);

  it('a kill -9 of the service mid-queue: the running job is interrupted (not run again), queued ones run after the restart', async () => {
    const running = await ok('alice', 'POST', '/v1/jobs', { kind: 'sandbox.exec', input: { workspace: 'work', command: 'echo x >> ~/runs.txt; sleep 60' } });
    const queued = await ok('alice', 'POST', '/v1/jobs', { kind: 'sandbox.exec', input: { workspace: 'work', command: 'echo queued' }, run_at: new Date(Date.now() + 4000).toISOString() });
    for (let i = 0; i < 100 && (await ok('alice', 'GET', `/v1/jobs/${running.id}`)).state !== 'running'; i++) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 1000));
    service?.kill('SIGKILL');
    await service?.catch(() => undefined);
    await serve();
    let job = await ok('alice', 'GET', `/v1/jobs/${running.id}`);
    expect(job).toMatchObject({ state: 'interrupted', error: expect.stringContaining('not run again') });
    for (let i = 0; i < 100 && job.state !== 'succeeded'; i++) {
      job = await ok('alice', 'GET', `/v1/jobs/${queued.id}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(job).toMatchObject({ state: 'succeeded', steps: [expect.objectContaining({ stdout: 'queued\n' })] });
    expect((await ok('alice', 'POST', '/v1/exec', { workspace: 'work', command: 'cat ~/runs.txt' })).stdout).toBe('x\n');
  }, 300_000);

  it('cs jobs exec queues through the service and waits', async () => {
    const run = await runCs(['jobs', 'exec', '--workspace', 'work', '--wait', '--url', url, '--', 'echo from-cli; exit 3'], { env: { ...env, CS_API_KEY: keys['alice'] as string }, timeoutMs: 120_000 });
    expect(run.exitCode).toBe(3);
    expect(run.stdout).toBe('from-cli');
    const noKey = await runCs(['jobs', 'list', '--url', url], { env, timeoutMs: 60_000 });
    expect(noKey.exitCode).toBe(2);
    expect(noKey.stderr).toContain('CS_API_KEY');
  }, 120_000);

  it('MCP: the terminal tool, from the official client over HTTP and over stdio', async () => {
    const client = new Client({ name: 'cs-test', version: '1' });
    await client.connect(new StreamableHTTPClientTransport(new URL(`${url}/v1/mcp`), { requestInit: { headers: { authorization: `Bearer ${keys['alice']}` } } }));
    expect((await client.listTools()).tools.map((t) => t.name)).toEqual(['terminal']);
    const exec = await client.callTool({ name: 'terminal', arguments: { workspace: 'work', command: 'echo via-mcp' } });
    expect(exec.structuredContent).toMatchObject({ workspace: 'work', exit_code: 0, stdout: 'via-mcp\n' });
    await client.callTool({ name: 'terminal', arguments: { workspace: 'work', action: 'write_file', path: 'mcp.txt', content: 'written' } });
    const read = await client.callTool({ name: 'terminal', arguments: { workspace: 'work', action: 'read_file', path: 'mcp.txt' } });
    expect(read.structuredContent).toMatchObject({ workspace: 'work', content: 'written' });
    const eph = await client.callTool({ name: 'terminal', arguments: { image, command: 'hostname' } });
    expect(eph.structuredContent).toMatchObject({ ephemeral: true, workspace: expect.stringMatching(/^ephemeral-/) });
    const other = await client.callTool({ name: 'terminal', arguments: { workspace: 'nope', command: 'true' } });
    expect(other.isError).toBe(true);
    await client.close();
    // Bob's key: Alice's workspace does not exist for him.
    const bob = new Client({ name: 'cs-test', version: '1' });
    await bob.connect(new StreamableHTTPClientTransport(new URL(`${url}/v1/mcp`), { requestInit: { headers: { authorization: `Bearer ${keys['bob']}` } } }));
    expect((await bob.callTool({ name: 'terminal', arguments: { workspace: 'work', command: 'true' } })).isError).toBe(true);
    await bob.close();

    const local = new Client({ name: 'cs-test', version: '1' });
    await local.connect(new StdioClientTransport({ command: process.execPath, args: [BIN, 'mcp', 'serve'], env: userEnv(env), stderr: 'ignore' }));
    // Workspaces made through the CLI are the local user's: the stdio server acts as them.
    expect((await cs('workspace', 'create', '--name', 'mine', '--image', image, '--memory', '256Mi', '--disk', '512Mi')).exitCode).toBe(0);
    const listed = await local.callTool({ name: 'terminal', arguments: { workspace: 'mine', action: 'list_files', path: '.' } });
    expect(listed.structuredContent).toMatchObject({ workspace: 'mine', path: '/home/owner' });
    await local.close();
    await cs('workspace', 'remove', 'mine', '--force');
  }, 300_000);
});
