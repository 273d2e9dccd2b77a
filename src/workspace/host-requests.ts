import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { SNAPSHOT_NAME, SNAPSHOT_NAME_RULE } from '../definition/names.js';
import { GUEST_REQUEST_ENV } from '../snapshot/create.js';
import { packageRoot } from '../util/package-root.js';

/**
 * `cs` inside a workspace. A guest has no cs of its own and no way into the
 * host's state; what it has is a second virtio-serial port, `cs.host`, and
 * a small script (`/usr/local/bin/cs`, written by init) that sends its
 * arguments there. The supervisor answers by running the host's `cs` for
 * this workspace, and only the snapshot commands: `cs snapshot create NAME
 * [--home | --personal] …` becomes `cs snapshot create NAME … -W
 * SANDBOX/WORKSPACE`, as Crafting's `cs snapshot create` does from inside a
 * workspace. Anything that names host paths or other workspaces (`-W`,
 * `--from-dir`, `--parent`) is refused: a guest must not steer the host.
 *
 * What such a request may do is narrowed on the host (see
 * decideHostRequest and GUEST_REQUEST_ENV): replace only snapshots this
 * workspace made, and never set the user's default personal snapshot.
 *
 * The port speaks lines: the guest sends `REQ ID BASE64(args, each ended by
 * NUL)`, and `CANCEL ID` on Ctrl-C; the host answers `OUT ID BASE64`,
 * `ERR ID BASE64`, `BEAT ID` every 10 s while it works, and finally `EXIT ID
 * CODE`. Only one guest process can hold the port at a time.
 */

const MAX_REQUEST = 64 * 1024;
const CHUNK = 3 * 1024;
/** Replies to a guest that does not read are dropped beyond this, so it cannot fill the supervisor's memory. */
const MAX_QUEUED = 1024 * 1024;
const CHILD_TIMEOUT_MS = 60 * 60_000;
const HEARTBEAT_MS = 10_000;

export type HostDecision = { ok: true; argv: string[] } | { ok: false; message: string };

const USAGE =
  'usage: cs snapshot create NAME [--home | --personal] [-f] [--json]\n' +
  '       cs snapshot list [--json] | show NAME [--personal | --shared] [--json] | personal get-default [--json]\n' +
  '(inside a workspace, cs runs these snapshot commands on its host, for this workspace)';

/**
 * What the host runs for a guest's `cs ARGS`, or why it will not. An allow
 * list, token by token, and the command line rebuilt from what was allowed:
 * nothing the guest sends reaches the host's option parser as is (oclif
 * would read `-Wx` or `-fW x` as a workspace). No `-W`, `--from-dir`,
 * `--parent` or choosing the default personal snapshot: a guest acts on
 * this workspace only, and never on what the user's other workspaces get.
 */
export function decideHostRequest(args: readonly string[], target: string): HostDecision {
  const [group, command, ...rest] = args;
  if (group !== 'snapshot' || command === undefined) return { ok: false, message: args.length === 0 || group === '--help' || group === '-h' ? USAGE : `inside a workspace, cs runs only snapshot commands\n${USAGE}` };
  const names = rest.filter((a) => !a.startsWith('-'));
  const flags = rest.filter((a) => a.startsWith('-'));
  const only = (allowed: readonly string[], positional: number): string | undefined => {
    const bad = flags.find((f) => !allowed.includes(f));
    if (bad) return `${bad} is not available inside a workspace`;
    if (names.length !== positional) return positional === 0 ? `unexpected ${names.join(' ')}` : 'give one snapshot name';
    if (positional === 1 && !SNAPSHOT_NAME.test(names[0] as string)) return `invalid snapshot name "${names[0]}": ${SNAPSHOT_NAME_RULE}`;
    return undefined;
  };
  const json = flags.includes('--json') ? ['--json'] : [];
  let problem: string | undefined;
  switch (command) {
    case 'create': {
      problem = only(['--home', '--personal', '-f', '--force', '--json'], 1);
      if (problem) break;
      if (flags.includes('--home') && flags.includes('--personal')) return { ok: false, message: '--home and --personal do not go together' };
      const kind = flags.includes('--home') ? ['--home'] : flags.includes('--personal') ? ['--personal'] : [];
      const force = flags.includes('-f') || flags.includes('--force') ? ['-f'] : [];
      return { ok: true, argv: ['snapshot', 'create', names[0] as string, ...kind, ...force, ...json, '-W', target] };
    }
    case 'list':
    case 'ls':
      problem = only(['--json'], 0);
      if (problem) break;
      return { ok: true, argv: ['snapshot', 'list', ...json] };
    case 'show': {
      problem = only(['--personal', '--shared', '--json'], 1);
      if (problem) break;
      const namespace = flags.includes('--personal') ? ['--personal'] : flags.includes('--shared') ? ['--shared'] : [];
      return { ok: true, argv: ['snapshot', 'show', names[0] as string, ...namespace, ...json] };
    }
    case 'personal':
      if (rest[0] === 'get-default' && rest.slice(1).every((a) => a === '--json')) return { ok: true, argv: ['snapshot', 'personal', 'get-default', ...json] };
      problem = 'only `cs snapshot personal get-default` is available inside a workspace (choose the default on the host)';
      break;
    default:
      problem = `cs snapshot ${command} is not available inside a workspace`;
  }
  return { ok: false, message: `${problem ?? 'not allowed'}\n${USAGE}` };
}

function cliEntry(): string[] {
  const root = packageRoot();
  const built = join(root, 'dist', 'bundle', 'run.js'); // what bin/run.cjs starts from
  return existsSync(built) ? [join(root, 'bin', 'run.cjs')] : ['--import', 'tsx', join(root, 'bin', 'dev.js')];
}

/** Serve the guest's requests on the host end of the `cs.host` port until it closes. */
export function serveHostRequests(socket: Socket, target: string, log: (line: string) => void): void {
  let buffer = '';
  let child: ChildProcess | undefined;
  const send = (line: string, always = false): void => {
    if (socket.destroyed) return;
    if (!always && socket.writableLength > MAX_QUEUED) return;
    socket.write(`${line}\n`);
  };
  const reply = (id: string, message: string, code: number): void => {
    send(`ERR ${id} ${Buffer.from(`cs: ${message}\n`).toString('base64')}`);
    send(`EXIT ${id} ${code}`);
  };
  socket.on('error', () => undefined);
  socket.on('close', () => child?.kill('SIGTERM'));
  let childId: string | undefined;
  const handle = (line: string): void => {
    const cancel = /^CANCEL ([0-9]{1,10})$/.exec(line);
    if (cancel) {
      if (child && childId === cancel[1]) child.kill('SIGTERM');
      return;
    }
    const match = /^REQ ([0-9]{1,10}) ([A-Za-z0-9+/=]*)$/.exec(line);
    if (!match) return;
    const id = match[1] as string;
    if (child) return reply(id, 'another cs command of this workspace is running', 1);
    const args = Buffer.from(match[2] as string, 'base64').toString('utf8').split('\0').slice(0, -1);
    const decision = decideHostRequest(args, target);
    if (!decision.ok) return reply(id, decision.message, 2);
    log(`guest asked for: cs ${JSON.stringify(decision.argv).slice(0, 500)}`);
    // The supervisor's umask (077) is for its sockets; snapshots it makes follow the usual one.
    const started = spawn('sh', ['-c', 'umask 022; exec "$@"', 'sh', process.execPath, ...cliEntry(), ...decision.argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1', [GUEST_REQUEST_ENV]: target },
      timeout: CHILD_TIMEOUT_MS,
    });
    child = started;
    childId = id;
    // A heartbeat, so the guest can tell a long snapshot from a host that went away.
    const beat = setInterval(() => send(`BEAT ${id}`), HEARTBEAT_MS);
    const relay = (kind: 'OUT' | 'ERR') => (data: Buffer): void => {
      for (let i = 0; i < data.length; i += CHUNK) send(`${kind} ${id} ${data.subarray(i, i + CHUNK).toString('base64')}`);
    };
    started.stdout?.on('data', relay('OUT'));
    started.stderr?.on('data', relay('ERR'));
    started.on('error', (error) => send(`ERR ${id} ${Buffer.from(`cs: ${error.message}\n`).toString('base64')}`));
    started.on('close', (code) => {
      clearInterval(beat);
      child = undefined;
      childId = undefined;
      send(`EXIT ${id} ${code ?? 1}`, true);
    });
  };
  socket.on('data', (chunk: Buffer) => {
    buffer += chunk.toString('latin1');
    if (buffer.length > MAX_REQUEST && !buffer.includes('\n')) buffer = '';
    let newline: number;
    while ((newline = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      try {
        handle(line);
      } catch (error) {
        // Nothing a guest sends may take the supervisor down.
        log(`guest request failed: ${(error as Error).message}`);
      }
    }
  });
}
