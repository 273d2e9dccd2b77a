import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { validateFile } from '../definition/load.js';
import type { Checkout, Hook, Manifest, PortForwardRule, Probe, RunSpec, SystemFile, Workspace } from '../definition/model.js';
import { WORKSPACE_HOME, WORKSPACE_USER } from '../definition/model.js';
import { packDirectory } from '../layers/pack.js';
import { CsError, VmError } from '../util/errors.js';
import { run } from '../util/process.js';
import type { AgentClient } from '../vm/agent-client.js';
import { DAEMON_LOG_DIR, expand, GUEST_AGENT, GUEST_BUSYBOX, parsePasswd, runDir, runEnv, workspaceEnv, type GuestIdentity } from './guest-env.js';
import { ACCOUNT_STEP, type PortMapping, type WorkspaceRecord } from './state.js';

/**
 * A workspace's start-up, in Crafting's order: (snapshots are already the
 * root) the owner account, system files, checkouts, their `post-checkout`
 * and `build` hooks, `on_create` (first start only) or `on_resume`, daemons,
 * then readiness probes. Each step runs through the agent and sends its output
 * to the workspace log; a failing step fails the start with that output.
 */

export interface StepContext {
  client: AgentClient;
  record: WorkspaceRecord;
  /** First boot of this workspace (its disk is new). */
  firstBoot: boolean;
  log: (line: string) => void;
  /** The port mappings of another workspace of the same sandbox (for port_forward_rules). */
  siblingPorts: (workspace: string) => Promise<readonly PortMapping[] | undefined>;
  /** Records a step's start and end (the supervisor keeps them in run.json). */
  step: <T>(name: string, fn: () => Promise<T>) => Promise<T>;
}

export class StepError extends CsError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { code: 'STEP_FAILED', exitCode: 5, ...options });
  }
}

export function identity(record: WorkspaceRecord): GuestIdentity {
  return { sandbox: record.sandbox, workspace: record.name };
}

/** Runs a command in the guest, streaming its output to the log; throws with the output's tail on failure. */
export async function guestRun(
  ctx: StepContext,
  what: string,
  options: { argv: string[]; env: Record<string, string>; cwd?: string; user?: string; timeoutMs?: number; input?: Buffer },
): Promise<string> {
  const result = await ctx.client.run({
    argv: options.argv,
    env: options.env,
    ...(options.cwd ? { cwd: options.cwd } : {}),
    ...(options.user ? { user: options.user } : {}),
    ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.input ? { input: options.input } : {}),
  });
  const out = Buffer.concat([result.stdout, result.stderr]).toString('utf8');
  for (const line of out.split('\n')) if (line.trim() !== '') ctx.log(`  ${line}`);
  if (result.timedOut) throw new StepError(`${what} timed out after ${Math.round((options.timeoutMs ?? 0) / 1000)} s${tailOf(out)}`);
  if (result.code !== 0) throw new StepError(`${what} failed with exit code ${result.code}${tailOf(out)}`);
  return result.stdout.toString('utf8');
}

function tailOf(out: string): string {
  const lines = out.trimEnd().split('\n').filter((l) => l !== '').slice(-10);
  return lines.length > 0 ? `:\n${lines.map((l) => `    ${l}`).join('\n')}` : ' (no output)';
}

export const ROOT_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root' };

/**
 * The `owner` account people work as, added to the image's own files when
 * missing (with busybox, so any glibc image works, even one without
 * useradd). uid 1000 unless the image already uses it; then the files
 * snapshots put in its home as uid 1000 are given to it.
 */
const ENSURE_USER = `
set -e
BB=${GUEST_BUSYBOX}
U=${WORKSPACE_USER}
H=${WORKSPACE_HOME}
if ! $BB grep -q "^$U:" /etc/passwd; then
  id=1000
  while $BB cut -d: -f3 /etc/passwd | $BB grep -qx "$id" || $BB cut -d: -f3 /etc/group | $BB grep -qx "$id"; do id=$((id + 1)); done
  shell=/bin/sh
  [ -x /bin/bash ] && shell=/bin/bash
  $BB grep -q "^$U:" /etc/group || echo "$U:x:$id:" >>/etc/group
  gid=$($BB grep "^$U:" /etc/group | $BB cut -d: -f3)
  echo "$U:x:$id:$gid:$U:$H:$shell" >>/etc/passwd
  [ -f /etc/shadow ] && echo "$U:!:19000:0:99999:7:::" >>/etc/shadow
  [ -d /etc/sudoers.d ] && echo "$U ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/cs-$U && $BB chmod 0440 /etc/sudoers.d/cs-$U
fi
$BB mkdir -p "$H"
$BB chown "$U:" "$H"
# The port to the host's cs (snapshots of this workspace) is the owner's, not every guest user's.
[ -L /run/cs/host-port ] && $BB chown "$U" "$($BB readlink /run/cs/host-port)"
# Home and personal snapshots record their files as uid 1000: give them to the owner when the image made it another uid.
uid=$($BB grep "^$U:" /etc/passwd | $BB cut -d: -f3)
[ "$uid" = 1000 ] || $BB find "$H" -xdev -user 1000 -exec $BB chown -h "$U:" {} +
$BB grep "^$U:" /etc/passwd | $BB cut -d: -f7
`;

export async function ensureOwner(ctx: StepContext): Promise<void> {
  await ctx.step(ACCOUNT_STEP, () => guestRun(ctx, 'creating the owner account', { argv: [GUEST_BUSYBOX, 'sh', '-c', ENSURE_USER], env: ROOT_ENV }));
}

export interface Ids {
  users: Map<string, { uid: number; gid: number }>;
  groups: Map<string, number>;
}

export async function readIds(client: AgentClient): Promise<Ids> {
  const users = new Map<string, { uid: number; gid: number }>();
  const groups = new Map<string, number>();
  for (const entry of parsePasswd((await client.readFile('/etc/passwd')).toString('utf8'))) users.set(entry.name, { uid: entry.uid, gid: entry.gid });
  const groupText = await client.readFile('/etc/group').catch(() => Buffer.alloc(0));
  for (const line of groupText.toString('utf8').split('\n')) {
    const f = line.split(':');
    if (f.length >= 3 && f[0]) groups.set(f[0], Number(f[2]));
  }
  return { users, groups };
}

/** `user[:group]` (names or numbers) to ids; the default owner of system files is root. */
function ownerIds(owner: string | undefined, ids: Ids, path: string): { uid: number; gid: number } {
  if (!owner) return { uid: 0, gid: 0 };
  const [user = '', group] = owner.split(':');
  const u = /^\d+$/.test(user) ? { uid: Number(user), gid: Number(user) } : ids.users.get(user);
  if (!u) throw new StepError(`system file ${path}: owner "${user}" is not a user of this workspace's image`);
  if (group === undefined || group === '') return u;
  const gid = /^\d+$/.test(group) ? Number(group) : ids.groups.get(group);
  if (gid === undefined) throw new StepError(`system file ${path}: group "${group}" is not a group of this workspace's image`);
  return { uid: u.uid, gid };
}

export async function writeSystemFiles(ctx: StepContext): Promise<void> {
  const files = ctx.record.spec.system.files;
  if (files.length === 0) return;
  await ctx.step('system files', async () => {
    const ids = await readIds(ctx.client);
    const env = workspaceEnv(identity(ctx.record), ctx.record.spec);
    for (const file of files) await writeSystemFile(ctx, file, ids, env);
  });
}

/** A content or template file's bytes as written (templates expand the workspace's env). */
export function renderedText(file: Exclude<SystemFile, { kind: 'symlink' }>, env: Record<string, string>): string {
  return file.kind === 'content' ? file.content : expand(file.template, env);
}

export async function writeSystemFile(ctx: StepContext, file: SystemFile, ids: Ids, env: Record<string, string>): Promise<void> {
  const { uid, gid } = ownerIds(file.owner, ids, file.path);
  ctx.log(`  ${file.path}`);
  if (file.kind === 'symlink') {
    const dir = file.path.slice(0, file.path.lastIndexOf('/')) || '/';
    await guestRun(ctx, `linking ${file.path}`, {
      argv: [GUEST_BUSYBOX, 'sh', '-c', `${GUEST_BUSYBOX} mkdir -p "$1" && ${GUEST_BUSYBOX} ln -sfn "$2" "$3" && ${GUEST_BUSYBOX} chown -h ${uid}:${gid} "$3"`, 'sh', dir, file.target, file.path],
      env: ROOT_ENV,
    });
    return;
  }
  const text = renderedText(file, env);
  await ctx.client.writeFile(file.path, Buffer.from(text, 'utf8'), { mode: file.mode ?? 0o644, uid, gid, mkdirs: true }).catch((error: unknown) => {
    throw new StepError(`cannot write system file ${file.path}: ${(error as Error).message}`, { cause: error });
  });
}

/** git URLs as given; a local path becomes file:// so that --depth applies to it. */
function cloneSource(url: string, shallow: boolean): string {
  if (shallow && isAbsolute(url)) return `file://${url}`;
  return url;
}

/**
 * Checkouts are cloned on the host, so any URL the host's git accepts works
 * (local paths included, and the host's credentials), then copied into the
 * owner's home as a tar stream unpacked by the owner: files are theirs.
 * An existing folder is left alone: the workspace's work is never replaced.
 */
/** Where a checkout lives in the guest. */
export function checkoutDir(item: Pick<Checkout, 'path' | 'dest'>): string {
  return item.dest ?? `${WORKSPACE_HOME}/${item.path}`;
}

export async function checkout(ctx: StepContext, item: Checkout): Promise<{ manifest: Manifest | undefined; cloned: boolean }> {
  const dest = checkoutDir(item);
  // A folder outside the home is made by root for the owner; there an empty folder (from the image) counts as absent.
  const probe = item.dest
    ? `${GUEST_BUSYBOX} mkdir -p "$1" && ${GUEST_BUSYBOX} chown ${WORKSPACE_USER}: "$1" && [ -n "$(${GUEST_BUSYBOX} ls -A "$1")" ]`
    : `${GUEST_BUSYBOX} test -e "$1"`;
  const exists = await ctx.client.run({ argv: [GUEST_BUSYBOX, 'sh', '-c', probe, 'sh', dest], env: ROOT_ENV });
  const host = await mkdtemp(join(tmpdir(), 'cs-checkout-'));
  try {
    const cloned = exists.code !== 0;
    if (!cloned) {
      ctx.log(`  ${dest} exists; kept as it is`);
    } else {
      const isCommit = item.versionSpec !== undefined && /^[0-9a-f]{7,40}$/i.test(item.versionSpec);
      const args = ['clone', '--quiet'];
      if (item.historyDepth && !isCommit) args.push('--depth', String(item.historyDepth));
      if (item.versionSpec && !isCommit) args.push('--branch', item.versionSpec);
      args.push('--', cloneSource(item.repo.git, Boolean(item.historyDepth) && !isCommit), join(host, 'repo'));
      ctx.log(`  git ${args.join(' ')}`);
      await run('git', args, { timeoutMs: 30 * 60_000, env: { GIT_TERMINAL_PROMPT: '0' } }).catch((error: unknown) => {
        throw new StepError(`cannot clone ${item.repo.git} for ${item.path}: ${(error as Error).message}`, { cause: error });
      });
      if (isCommit) await run('git', ['-C', join(host, 'repo'), 'checkout', '--quiet', item.versionSpec as string]);
      const exec = ctx.client.exec({
        argv: [GUEST_BUSYBOX, 'sh', '-c', `${GUEST_BUSYBOX} mkdir -p "$1" && cd "$1" && ${GUEST_BUSYBOX} tar -x -f -`, 'sh', dest],
        env: workspaceEnv(identity(ctx.record), ctx.record.spec),
        user: WORKSPACE_USER,
        stdin: true,
      });
      await exec.started;
      const stderr: Buffer[] = [];
      exec.stderr.on('data', (c: Buffer) => stderr.push(c));
      exec.stdout.resume();
      const stdin = exec.stdin;
      if (!stdin) throw new VmError('the agent gave no stdin for the checkout copy');
      // pipeline() reports an error on either side (a file the host cannot
      // read, a guest tar that stopped early) instead of leaving it unhandled.
      const copied = pipeline(packDirectory(join(host, 'repo')), stdin).then(
        () => undefined,
        (error: Error) => error,
      );
      const result = await exec.exit;
      const copyError = await copied;
      if (result.code !== 0) throw new StepError(`copying ${item.repo.git} into ${dest} failed${tailOf(Buffer.concat(stderr).toString('utf8'))}`);
      if (copyError) throw new StepError(`copying ${item.repo.git} into ${dest} failed: ${copyError.message}`, { cause: copyError });
    }
    return { manifest: await readManifest(ctx, item), cloned };
  } finally {
    await rm(host, { recursive: true, force: true });
  }
}

/** A checkout's own manifest, read from the workspace's copy (it may have been edited there). */
export async function readManifest(ctx: Pick<StepContext, 'client'>, item: Checkout): Promise<Manifest | undefined> {
  const text = await ctx.client.readFile(`${checkoutDir(item)}/.sandbox/manifest.yaml`).catch(() => undefined);
  if (!text) return undefined;
  const host = await mkdtemp(join(tmpdir(), 'cs-manifest-'));
  try {
    const file = join(host, 'manifest.yaml');
    await writeFile(file, text);
    const parsed = await validateFile(file, 'manifest');
    if (!parsed.ok) {
      const first = parsed.issues[0];
      throw new StepError(`${item.path}/.sandbox/manifest.yaml is invalid: ${first ? `${first.line}:${first.column} ${first.message}` : 'unknown problem'}`);
    }
    return parsed.kind === 'manifest' ? { ...parsed.model, file: `${item.path}/.sandbox/manifest.yaml` } : undefined;
  } finally {
    await rm(host, { recursive: true, force: true });
  }
}

export async function runCheckouts(ctx: StepContext): Promise<Record<string, Manifest>> {
  const manifests: Record<string, Manifest> = {};
  for (const item of ctx.record.spec.checkouts) {
    const { manifest } = await ctx.step(`checkout ${item.path}`, () => checkout(ctx, item));
    if (manifest) manifests[item.path] = manifest;
  }
  return manifests;
}

export async function runHook(ctx: StepContext, what: string, spec: RunSpec, base: string, timeoutMs: number | undefined, manifest?: Manifest): Promise<void> {
  await ctx.step(what, () =>
    guestRun(ctx, what, {
      argv: ['/bin/sh', '-c', spec.cmd],
      env: runEnv(identity(ctx.record), ctx.record.spec, spec, manifest),
      cwd: runDir(spec, base),
      user: WORKSPACE_USER,
      ...(timeoutMs ? { timeoutMs } : {}),
    }),
  );
}

export async function runRepoHooks(ctx: StepContext, manifests: Record<string, Manifest>): Promise<void> {
  for (const [path, manifest] of Object.entries(manifests)) {
    const item = ctx.record.spec.checkouts.find((c) => c.path === path);
    const repo = checkoutDir(item ?? { path });
    if (manifest.hooks.postCheckout) await runHook(ctx, `post-checkout hook of ${path}`, manifest.hooks.postCheckout, repo, undefined, manifest);
    if (manifest.hooks.build) await runHook(ctx, `build hook of ${path}`, manifest.hooks.build, repo, undefined, manifest);
  }
}

export async function runLifecycle(ctx: StepContext, name: 'on_create' | 'on_resume' | 'on_suspend' | 'on_delete', hook: Hook | undefined): Promise<void> {
  if (!hook) return;
  await runHook(ctx, `${name} hook`, hook.run, WORKSPACE_HOME, hook.timeoutMs);
}


export interface DaemonRun {
  name: string;
  run: RunSpec;
  base: string;
  manifest?: Manifest;
}

/** The definition's daemons, then those of the repos' manifests. */
export function daemonsOf(ctx: Pick<StepContext, 'record'>, manifests: Record<string, Manifest>): DaemonRun[] {
  return [
    ...ctx.record.spec.system.daemons.map((d) => ({ name: d.name, run: d.run, base: WORKSPACE_HOME })),
    ...Object.entries(manifests).flatMap(([path, m]) => m.daemons.map((d) => ({ name: d.name, run: d.run, base: checkoutDir(ctx.record.spec.checkouts.find((c) => c.path === path) ?? { path }), manifest: m }))),
  ];
}

/** What a daemon is started with: a daemon whose launch changed is restarted by a live update. */
export function daemonLaunch(ctx: Pick<StepContext, 'record'>, d: DaemonRun): { argv: string[]; env: Record<string, string>; cwd: string } {
  return { argv: ['/bin/sh', '-c', d.run.cmd], env: runEnv(identity(ctx.record), ctx.record.spec, d.run, d.manifest), cwd: runDir(d.run, d.base) };
}

/**
 * Where the process group of a daemon or relay started by cs is noted, so
 * that a live update can stop it (each is a session leader: its pid is its
 * group). /run is a tmpfs: the notes go with the boot.
 */
export function pidFile(kind: 'daemons' | 'forwards', name: string): string {
  return `/run/cs/${kind}/${name.replace(/[^A-Za-z0-9_.-]/g, '_')}.pid`;
}

async function notePid(ctx: StepContext, file: string, pid: number): Promise<void> {
  await ctx.client.writeFile(file, Buffer.from(`${pid}\n`), { mode: 0o644, mkdirs: true });
}

/** Starts a daemon; one cs started under this name before (a retried update) is stopped first, never left beside it. */
export async function startDaemon(ctx: StepContext, d: DaemonRun): Promise<void> {
  await stopNoted(ctx, pidFile('daemons', d.name), `daemon ${d.name}`, { quiet: true });
  const log = `${DAEMON_LOG_DIR}/${d.name}.log`;
  const handle = ctx.client.exec({ ...daemonLaunch(ctx, d), user: WORKSPACE_USER, detach: { log } });
  const { pid } = await handle.started;
  await handle.exit;
  await notePid(ctx, pidFile('daemons', d.name), pid);
  ctx.log(`  started ${d.name} (pid ${pid}); its output goes to ${log} in the workspace`);
}

export async function startDaemons(ctx: StepContext, manifests: Record<string, Manifest>): Promise<void> {
  for (const d of daemonsOf(ctx, manifests)) await ctx.step(`daemon ${d.name}`, () => startDaemon(ctx, d));
}

/** Stops what a pid file names (its whole process group): TERM, then KILL after 10 s. */
export async function stopNoted(ctx: StepContext, file: string, what: string, options: { quiet?: boolean } = {}): Promise<void> {
  const script = `
BB=${GUEST_BUSYBOX}
pid=$($BB cat "$1" 2>/dev/null) || exit 0
case "$pid" in ''|*[!0-9]*|0|1) $BB rm -f "$1"; exit 0 ;; esac
# busybox kill takes a negative pid (the process group) as is; it knows no "--".
if $BB kill -s TERM "-$pid" 2>/dev/null; then
  i=0
  while $BB kill -0 "-$pid" 2>/dev/null && [ $i -lt 100 ]; do $BB sleep 0.1; i=$((i + 1)); done
  $BB kill -s KILL "-$pid" 2>/dev/null
fi
$BB rm -f "$1"
`;
  await guestRun(ctx, `stopping ${what}`, { argv: [GUEST_BUSYBOX, 'sh', '-c', script, 'sh', file], env: ROOT_ENV });
  if (!options.quiet) ctx.log(`  stopped ${what}`);
}

/** The host as QEMU's user-mode network shows it to the guest. */
const HOST_FROM_GUEST = '10.0.2.2';

/**
 * `port_forward_rules`: LOCAL inside this workspace reaches a port of
 * another workspace. The other workspace's port is forwarded to the host's
 * loopback (its `ports`), which the guest reaches through QEMU's gateway; a
 * busybox `nc` relay (one process per connection) joins the two.
 */
export async function startForwards(ctx: StepContext): Promise<void> {
  for (const rule of ctx.record.spec.portForwardRules) {
    await ctx.step(`forward ${rule.local.port} to ${rule.remote.target}:${rule.remote.port}`, () => startForward(ctx, rule));
  }
}

/** The host port a rule's relay connects to (the other workspace's forward of the port). */
export async function forwardHostPort(ctx: Pick<StepContext, 'record' | 'siblingPorts'>, rule: PortForwardRule): Promise<number> {
  const ports = await ctx.siblingPorts(rule.remote.target);
  if (!ports) throw new StepError(`port_forward_rules: workspace "${rule.remote.target}" does not exist in sandbox ${ctx.record.sandbox}`);
  const mapping = ports.find((p) => p.guestPort === rule.remote.port && p.protocol !== 'UDP');
  if (!mapping) {
    throw new StepError(`port_forward_rules: workspace "${rule.remote.target}" declares no TCP port ${rule.remote.port} in its ports, so nothing forwards to it`);
  }
  return mapping.hostPort;
}

export async function startForward(ctx: StepContext, rule: PortForwardRule): Promise<void> {
  const hostPort = await forwardHostPort(ctx, rule);
  await stopNoted(ctx, pidFile('forwards', String(rule.local.port)), `the relay of port ${rule.local.port}`, { quiet: true });
  const handle = ctx.client.exec({
    argv: [GUEST_BUSYBOX, 'nc', '-ll', '-p', String(rule.local.port), '-e', GUEST_BUSYBOX, 'nc', HOST_FROM_GUEST, String(hostPort)],
    env: ROOT_ENV,
    user: 'root',
    detach: { log: `${DAEMON_LOG_DIR}/forward-${rule.local.port}.log` },
  });
  const { pid } = await handle.started;
  await handle.exit;
  await notePid(ctx, pidFile('forwards', String(rule.local.port)), pid);
  ctx.log(`  127.0.0.1:${rule.local.port} -> ${rule.remote.target}:${rule.remote.port} (host 127.0.0.1:${hostPort})`);
}

function probeArgv(probe: Probe): string[] {
  switch (probe.kind) {
    case 'command':
      return ['/bin/sh', '-c', probe.command];
    case 'tcp':
      return [GUEST_AGENT, 'probe-tcp', '127.0.0.1', String(probe.port), '1000'];
    case 'http':
      return [GUEST_AGENT, 'probe-http', String(probe.port), probe.path, '2000'];
  }
}

function probeName(probe: Probe): string {
  if (probe.name) return probe.name;
  return probe.kind === 'command' ? probe.command : probe.kind === 'tcp' ? `tcp ${probe.port}` : `http ${probe.port}${probe.path}`;
}

/** Waits until every readiness probe passes, trying each once a second. */
export async function waitReady(ctx: StepContext, timeoutMs = 10 * 60_000): Promise<void> {
  const probes = ctx.record.spec.probes.readiness;
  if (probes.length === 0) return;
  await ctx.step('readiness', async () => {
    const deadline = Date.now() + timeoutMs;
    const pending = new Set(probes);
    let last = '';
    while (pending.size > 0) {
      for (const probe of [...pending]) {
        const result = await ctx.client.run({
          argv: probeArgv(probe),
          env: workspaceEnv(identity(ctx.record), ctx.record.spec),
          user: WORKSPACE_USER,
          cwd: WORKSPACE_HOME,
          timeoutMs: 10_000,
        });
        if (result.code === 0) {
          pending.delete(probe);
          ctx.log(`  probe ${probeName(probe)} passed`);
        } else {
          last = `${probeName(probe)}: ${Buffer.concat([result.stdout, result.stderr]).toString('utf8').trim().split('\n').slice(-1)[0] ?? ''}`;
        }
      }
      if (pending.size === 0) break;
      if (Date.now() > deadline) throw new StepError(`readiness probes did not pass within ${Math.round(timeoutMs / 1000)} s; last failure: ${last}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  });
}

/** The whole start-up. */
export async function startWorkspace(ctx: StepContext): Promise<void> {
  await ensureOwner(ctx);
  await writeSystemFiles(ctx);
  // Checkouts that exist are kept, so this clones only what is missing and
  // reads the repos' manifests as they are now in the workspace.
  const manifests = await runCheckouts(ctx);
  if (ctx.firstBoot) {
    await runRepoHooks(ctx, manifests);
    await runLifecycle(ctx, 'on_create', ctx.record.spec.lifecycle.onCreate);
    // The marker lives on the workspace's own disk: a reset disk is a new workspace.
    await ctx.client.writeFile(CREATED_MARKER, Buffer.from(new Date().toISOString() + '\n'), { mode: 0o644, mkdirs: true });
  } else {
    await runLifecycle(ctx, 'on_resume', ctx.record.spec.lifecycle.onResume);
  }
  await startForwards(ctx);
  await startDaemons(ctx, manifests);
  await waitReady(ctx);
  await writeApplied(ctx.client, await appliedNow(ctx, manifests));
}

/**
 * What the running guest was brought to (by its start-up or by a live
 * update), kept in the guest's /run: the spec, how each daemon and relay
 * was launched, and the repos' manifests as they were read. `cs apply`
 * compares it with the record (and with the manifests in the workspace now)
 * to know whether a running workspace still has something to take.
 */
export const APPLIED_FILE = '/run/cs/applied.json';

export interface Applied {
  spec: Workspace;
  /** Daemon name to its launch (see daemonLaunch). */
  daemons: Record<string, string>;
  /** Local port of a port_forward_rules relay to what it relays to. */
  relays: Record<string, string>;
  /** Checkout path to the sha256 of its .sandbox/manifest.yaml ('' when it has none). */
  manifests: Record<string, string>;
  /** False while (or when) the readiness probes after a live update have not passed. */
  ready?: boolean;
}

export function launchKeys(ctx: Pick<StepContext, 'record'>, manifests: Record<string, Manifest>): Record<string, string> {
  return Object.fromEntries(daemonsOf(ctx, manifests).map((d) => [d.name, JSON.stringify(daemonLaunch(ctx, d))]));
}

export async function relayKeys(ctx: Pick<StepContext, 'record' | 'siblingPorts'>): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const rule of ctx.record.spec.portForwardRules) out[String(rule.local.port)] = JSON.stringify({ ...rule, hostPort: await forwardHostPort(ctx, rule).catch(() => 0) });
  return out;
}

/** The manifests of a spec's checkouts as they are in the workspace now, by content. */
export async function manifestHashes(client: AgentClient, spec: Workspace): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const item of spec.checkouts) {
    const text = await client.readFile(`${checkoutDir(item)}/.sandbox/manifest.yaml`).catch(() => undefined);
    out[item.path] = text ? createHash('sha256').update(text).digest('hex') : '';
  }
  return out;
}

export async function appliedNow(ctx: StepContext, manifests: Record<string, Manifest>): Promise<Applied> {
  return { spec: ctx.record.spec, daemons: launchKeys(ctx, manifests), relays: await relayKeys(ctx), manifests: await manifestHashes(ctx.client, ctx.record.spec) };
}

export async function writeApplied(client: AgentClient, applied: Applied): Promise<void> {
  await client.writeFile(APPLIED_FILE, Buffer.from(JSON.stringify(applied) + '\n'), { mode: 0o600, mkdirs: true });
}

export async function readApplied(client: AgentClient): Promise<Applied | undefined> {
  const bytes = await client.readFile(APPLIED_FILE).catch(() => undefined);
  if (!bytes) return undefined;
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as Partial<Applied>;
    if (typeof parsed.spec !== 'object' || parsed.spec === null) return undefined;
    return { spec: parsed.spec, daemons: parsed.daemons ?? {}, relays: parsed.relays ?? {}, manifests: parsed.manifests ?? {}, ...(parsed.ready === false ? { ready: false } : {}) };
  } catch {
    return undefined;
  }
}

/** Written once the first start-up (checkouts, hooks, on_create) succeeded. */
export const CREATED_MARKER = '/var/lib/cs/created';

export async function isFirstBoot(client: AgentClient): Promise<boolean> {
  return client.readFile(CREATED_MARKER).then(
    () => false,
    () => true,
  );
}
