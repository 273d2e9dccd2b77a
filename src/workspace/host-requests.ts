import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'node:net';
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
 * The port speaks lines: the guest sends `REQ ID BASE64(args, each ended by
 * NUL)`; the host answers `OUT ID BASE64`, `ERR ID BASE64` and finally
 * `EXIT ID CODE`. Only one guest process can hold the port at a time.
 */

const MAX_REQUEST = 64 * 1024;
const CHUNK = 3 * 1024;
const ALLOWED = new Set(['create', 'list', 'ls', 'show', 'personal']);
const REFUSED_FLAGS = /^(-W|--workspace|--from-dir|--parent)(=|$)/;

export type HostDecision = { ok: true; argv: string[] } | { ok: false; message: string };

/** What the host runs for a guest's `cs ARGS`, or why it will not. */
export function decideHostRequest(args: readonly string[], target: string): HostDecision {
  if (args.length === 0 || args[0] === '--help' || args[0] === '-h') {
    return { ok: false, message: 'usage: cs snapshot create NAME [--home | --personal] [-f] [--set-personal-default] [--json]\n       cs snapshot list | show NAME | personal get-default | personal set-default NAME|NONE\n(inside a workspace, cs runs snapshot commands for this workspace on its host)' };
  }
  if (args[0] !== 'snapshot' || !ALLOWED.has(args[1] ?? '')) {
    return { ok: false, message: `inside a workspace, cs runs only snapshot commands (create, list, show, personal), not "${args.slice(0, 2).join(' ')}"; run other commands on the host` };
  }
  const refused = args.find((a) => REFUSED_FLAGS.test(a));
  if (refused) return { ok: false, message: `${refused.split('=')[0]} is not available inside a workspace: a snapshot made here is of this workspace (${target})` };
  const argv = [...args];
  if (args[1] === 'create') argv.push('-W', target);
  return { ok: true, argv };
}

function cliEntry(): string[] {
  const root = packageRoot();
  const built = join(root, 'dist', 'index.js');
  return existsSync(built) ? [join(root, 'bin', 'run.js')] : ['--import', 'tsx', join(root, 'bin', 'dev.js')];
}

/** Serve the guest's requests on the host end of the `cs.host` port until it closes. */
export function serveHostRequests(socket: Socket, target: string, log: (line: string) => void): void {
  let buffer = '';
  let busy = false;
  const send = (line: string): void => {
    if (!socket.destroyed) socket.write(`${line}\n`);
  };
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    buffer += chunk.toString('latin1');
    if (buffer.length > MAX_REQUEST && !buffer.includes('\n')) buffer = '';
    let newline: number;
    while ((newline = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      const match = /^REQ ([0-9]{1,10}) ([A-Za-z0-9+/=]*)$/.exec(line);
      if (!match) continue;
      const id = match[1] as string;
      if (busy) {
        send(`ERR ${id} ${Buffer.from('cs: another cs command of this workspace is running\n').toString('base64')}`);
        send(`EXIT ${id} 1`);
        continue;
      }
      const args = Buffer.from(match[2] as string, 'base64').toString('utf8').split('\0').slice(0, -1);
      const decision = decideHostRequest(args, target);
      if (!decision.ok) {
        send(`ERR ${id} ${Buffer.from(`cs: ${decision.message}\n`).toString('base64')}`);
        send(`EXIT ${id} 2`);
        continue;
      }
      busy = true;
      log(`guest asked for: cs ${decision.argv.join(' ')}`);
      // The supervisor's umask (077) is for its sockets; snapshots it makes follow the usual one.
      const child = spawn('sh', ['-c', 'umask 022; exec "$@"', 'sh', process.execPath, ...cliEntry(), ...decision.argv], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, NO_COLOR: '1' },
      });
      const relay = (kind: 'OUT' | 'ERR') => (data: Buffer): void => {
        for (let i = 0; i < data.length; i += CHUNK) send(`${kind} ${id} ${data.subarray(i, i + CHUNK).toString('base64')}`);
      };
      child.stdout.on('data', relay('OUT'));
      child.stderr.on('data', relay('ERR'));
      child.on('error', (error) => {
        send(`ERR ${id} ${Buffer.from(`cs: ${error.message}\n`).toString('base64')}`);
      });
      child.on('close', (code) => {
        busy = false;
        send(`EXIT ${id} ${code ?? 1}`);
      });
    }
  });
}
