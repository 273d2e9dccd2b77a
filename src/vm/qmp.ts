import type { Socket } from 'node:net';
import { VmError } from '../util/errors.js';

/**
 * A small client for QEMU's machine protocol (QMP): newline-delimited JSON
 * over a unix socket. cs needs three things from it: the greeting/capability
 * handshake, `human-monitor-command` (for `hostfwd_add`), and `quit`.
 * Replies arrive in order; asynchronous events are skipped.
 */
export class QmpClient {
  private buffer = '';
  private readonly waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void }[] = [];
  private greeted: Promise<void>;
  private closed = false;

  constructor(private readonly socket: Socket) {
    let greet: () => void = () => undefined;
    this.greeted = new Promise((resolve) => (greet = resolve));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (!line) continue;
        let message: Record<string, unknown>;
        try {
          message = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        if ('QMP' in message) greet();
        else if ('event' in message) continue;
        else {
          const next = this.waiting.shift();
          if (!next) continue;
          if ('error' in message) next.reject(new VmError(`QEMU refused: ${JSON.stringify(message['error'])}`));
          else next.resolve(message['return']);
        }
      }
    });
    const fail = (): void => {
      this.closed = true;
      for (const w of this.waiting.splice(0)) w.reject(new VmError('the QEMU monitor connection closed'));
    };
    socket.on('close', fail);
    socket.on('error', fail);
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    await this.greeted;
    if (this.closed) throw new VmError('the QEMU monitor connection is closed');
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  async handshake(): Promise<void> {
    await this.execute('qmp_capabilities');
  }

  /** A human monitor command; its text output is returned (QEMU reports some failures only there). */
  async hmp(commandLine: string): Promise<string> {
    return String((await this.execute('human-monitor-command', { 'command-line': commandLine })) ?? '');
  }

  close(): void {
    this.socket.destroy();
  }
}
