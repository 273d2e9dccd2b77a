import { constants as osConstants } from 'node:os';
import { Readable, Writable, type Duplex } from 'node:stream';
import { VmError } from '../util/errors.js';
import {
  CONNECTION_STREAM,
  DATA_CHUNK,
  FrameDecoder,
  FrameType,
  MAX_PAYLOAD,
  MAX_STREAM_ID,
  PROTOCOL_VERSION,
  Tag,
  decodeFields,
  encodeFields,
  encodeFrame,
  endsStream,
  fieldNumber,
  fieldText,
  type Field,
  type FieldInput,
  type Frame,
} from './protocol.js';

/**
 * The host side of cs-agent/1 (docs/agent-protocol.md) over any byte duplex:
 * the unix socket QEMU offers for the agent's virtio-serial port, or the
 * stdin/stdout of `cs-agent --stdio`. Requests run concurrently, one stream
 * each.
 */

export interface HelloResult {
  version: string;
  agent: string;
  uptimeMs: number;
}

export interface AgentInfo {
  version: string;
  uptimeMs: number;
  pid1: boolean;
  /** The 1, 5 and 15 minute load averages, as /proc/loadavg shows them ("0.00 0.01 0.05"). */
  loadavg: string;
}

export interface ExecOptions {
  argv: readonly string[];
  /** The program's whole environment (nothing is added): a map or "NAME=VALUE" entries. */
  env?: Readonly<Record<string, string>> | readonly string[];
  /** Working folder (default /). */
  cwd?: string;
  /** A user name from the guest's /etc/passwd, or a numeric uid. */
  user?: string | number;
  /** Kill the process group after this long; the exit then says timedOut. */
  timeoutMs?: number;
  /** Run on a new pseudo-terminal: stdout and stderr both arrive on stdout. */
  tty?: { rows: number; cols: number };
  /** Give the program a stdin fed through ExecHandle.stdin (otherwise /dev/null, or the silent terminal). */
  stdin?: boolean;
  /** Start a daemon: output appended to `log`, not tied to this connection; exit resolves at once with code 0. */
  detach?: { log: string };
}

export interface ExitStatus {
  /** The exit code, or 128 + the signal's number. */
  code: number;
  /** The signal that killed the program, if one did. */
  signal?: number;
  timedOut: boolean;
}

export interface ExecHandle {
  /** The stream id of this request on the connection. */
  readonly stream: number;
  /** Resolves once the program runs; rejects with an AgentError when it cannot start. */
  readonly started: Promise<{ pid: number }>;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Present when `stdin: true`; end() sends end-of-file. */
  readonly stdin: Writable | null;
  readonly exit: Promise<ExitStatus>;
  /** Sends a signal (number or name, e.g. 'SIGTERM') to the program's process group. */
  signal(signal: number | NodeJS.Signals): void;
  /** Resizes the terminal of a `tty` program. */
  resize(rows: number, cols: number): void;
}

export interface RunOptions extends ExecOptions {
  /** Sent as the program's stdin, followed by end-of-file. */
  input?: string | Uint8Array;
}

export interface RunResult extends ExitStatus {
  stdout: Buffer;
  stderr: Buffer;
}

export interface WriteFileOptions {
  /** Permission bits (default 0o644). */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Create missing parent folders (mode 0755, owned by uid/gid when given). */
  mkdirs?: boolean;
}

/** The agent refused or failed a request; `message` is the agent's own. */
export class AgentError extends VmError {
  /** The guest's errno, when the failure came from a system call. */
  readonly errno: number | undefined;
  /** Its symbolic name (ENOENT, EISDIR, ...), when known. */
  readonly errnoCode: string | undefined;

  constructor(message: string, errno: number | undefined) {
    super(message, { code: 'AGENT' });
    this.errno = errno;
    this.errnoCode = errno === undefined ? undefined : ERRNO_NAMES.get(errno);
  }

  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), errno: this.errno, errnoCode: this.errnoCode };
  }
}

// The guest is Linux, and so is every host that runs its VMs.
const ERRNO_NAMES = new Map(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

function closedError(cause?: unknown, agentMessage?: string): VmError {
  const detail = agentMessage ? ` (the agent said: ${agentMessage})` : '';
  return new VmError(`the workspace's agent connection closed${detail}`, {
    code: 'AGENT_CLOSED',
    ...(cause === undefined ? {} : { cause }),
  });
}

function agentErrorFrom(fields: readonly Field[]): AgentError {
  return new AgentError(fieldText(fields, Tag.message) ?? 'the agent reported an error', fieldNumber(fields, Tag.errno));
}

interface Deferred<T> {
  promise: Promise<T>;
  settled: boolean;
  resolve(value: T): void;
  reject(error: unknown): void;
}

/** A promise whose rejection never goes unhandled when nobody awaits it. */
function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined);
  const d: Deferred<T> = {
    promise,
    settled: false,
    resolve(value) {
      if (d.settled) return;
      d.settled = true;
      resolve(value);
    },
    reject(error) {
      if (d.settled) return;
      d.settled = true;
      reject(error);
    },
  };
  return d;
}

/** What the client does with the frames of one stream. */
interface StreamSink {
  frame(frame: Frame, fields: () => Field[]): void;
  fail(error: Error): void;
}

/** How much one stdout/stderr Readable holds before the connection is paused. */
const READABLE_HIGH_WATER = 1024 * 1024;

function signalNumber(signal: number | NodeJS.Signals): number {
  if (typeof signal === 'number') return signal;
  const n = osConstants.signals[signal];
  if (n === undefined) throw new VmError(`unknown signal ${signal}`, { code: 'AGENT_USAGE' });
  return n;
}

function execFields(options: ExecOptions): FieldInput[] {
  if (options.argv.length === 0) throw new VmError('exec needs a program to run (argv is empty)', { code: 'AGENT_USAGE' });
  const fields: FieldInput[] = options.argv.map((arg) => [Tag.arg, arg] as const);
  const env = options.env === undefined ? [] : Array.isArray(options.env)
    ? (options.env as readonly string[])
    : Object.entries(options.env as Readonly<Record<string, string>>).map(([name, value]) => `${name}=${value}`);
  for (const entry of env) fields.push([Tag.env, entry]);
  if (options.cwd !== undefined) fields.push([Tag.cwd, options.cwd]);
  if (options.user !== undefined) fields.push([Tag.user, String(options.user)]);
  if (options.timeoutMs !== undefined) fields.push([Tag.timeoutMs, Math.max(1, Math.ceil(options.timeoutMs))]);
  if (options.tty !== undefined) fields.push([Tag.tty, `${Math.trunc(options.tty.rows)}x${Math.trunc(options.tty.cols)}`]);
  if (options.stdin) fields.push([Tag.stdin, '1']);
  if (options.detach !== undefined) fields.push([Tag.detach, '1'], [Tag.log, options.detach.log]);
  return fields;
}

export class AgentClient {
  readonly #duplex: Duplex;
  readonly #decoder = new FrameDecoder();
  readonly #streams = new Map<number, StreamSink>();
  readonly #hellos: Deferred<HelloResult>[] = [];
  readonly #blocked = new Set<number>();
  #drainWaiters: (() => void)[] = [];
  #nextStream = 1;
  #closed: VmError | undefined;
  /** The last connection-level ERROR (stream 0), quoted when the connection then closes. */
  #agentMessage: string | undefined;

  constructor(duplex: Duplex) {
    this.#duplex = duplex;
    duplex.on('data', (chunk: Buffer) => this.#onData(chunk));
    duplex.on('drain', () => this.#wakeWriters());
    duplex.on('end', () => this.#fail(closedError(undefined, this.#agentMessage)));
    duplex.on('close', () => this.#fail(closedError(undefined, this.#agentMessage)));
    duplex.on('error', (error) => this.#fail(closedError(error, this.#agentMessage)));
  }

  /** Whether the connection is gone (closed by either side). */
  get closed(): boolean {
    return this.#closed !== undefined;
  }

  /**
   * Opens the conversation. The agent ends everything started before (on an
   * earlier connection, or on this one: those requests reject).
   */
  hello(): Promise<HelloResult> {
    const d = deferred<HelloResult>();
    if (this.#closed) {
      d.reject(this.#closed);
      return d.promise;
    }
    const reset = new VmError('the request was cancelled: the agent connection was reset by a new HELLO', { code: 'AGENT_RESET' });
    const sinks = [...this.#streams.values()];
    this.#streams.clear();
    for (const sink of sinks) sink.fail(reset);
    this.#hellos.push(d);
    this.#write(encodeFrame(FrameType.hello, CONNECTION_STREAM, encodeFields([[Tag.version, PROTOCOL_VERSION]])));
    return d.promise;
  }

  exec(options: ExecOptions): ExecHandle {
    const payload = encodeFields(execFields(options));
    if (payload.length > MAX_PAYLOAD) {
      throw new VmError(`the command line and environment take ${payload.length} bytes; the agent accepts at most ${MAX_PAYLOAD}`, { code: 'AGENT_USAGE' });
    }
    const id = this.#allocate();
    const started = deferred<{ pid: number }>();
    const exit = deferred<ExitStatus>();
    let finished = false;
    const output = (): Readable => {
      const readable = new Readable({ highWaterMark: READABLE_HIGH_WATER, read: () => this.#unblock(id) });
      // A consumer that destroys the stream must not leave the connection paused.
      readable.on('close', () => this.#unblock(id));
      return readable;
    };
    const stdout = output();
    const stderr = output();
    const end = (): void => {
      finished = true;
      this.#unblock(id);
      stdout.push(null);
      stderr.push(null);
    };

    this.#streams.set(id, {
      frame: (frame, fields) => {
        switch (frame.type) {
          case FrameType.started:
            started.resolve({ pid: fieldNumber(fields(), Tag.pid) ?? 0 });
            break;
          case FrameType.stdout:
            this.#deliver(id, stdout, frame.payload);
            break;
          case FrameType.stderr:
            this.#deliver(id, stderr, frame.payload);
            break;
          case FrameType.exit: {
            const f = fields();
            const signal = fieldNumber(f, Tag.signal);
            const status: ExitStatus = {
              code: fieldNumber(f, Tag.code) ?? 0,
              timedOut: fieldText(f, Tag.timedOut) === '1',
              ...(signal === undefined ? {} : { signal }),
            };
            if (!started.settled) started.reject(new VmError('the agent reported an exit for a program it had not started', { code: 'AGENT_PROTOCOL' }));
            exit.resolve(status);
            end();
            break;
          }
          case FrameType.error: {
            const error = agentErrorFrom(fields());
            started.reject(error);
            exit.reject(error);
            end();
            break;
          }
          default:
            break;
        }
      },
      fail: (error) => {
        started.reject(error);
        exit.reject(error);
        end();
      },
    });

    let stdin: Writable | null = null;
    if (options.stdin) {
      stdin = new Writable({
        highWaterMark: DATA_CHUNK,
        write: (chunk: Buffer, _encoding, callback) => {
          if (finished || this.#closed) {
            callback(); // the program is gone; like a closed pipe, its input goes nowhere
            return;
          }
          this.#sendData(id, chunk).then(() => callback(), () => callback());
        },
        final: (callback) => {
          if (!finished) this.#write(encodeFrame(FrameType.stdin, id));
          callback();
        },
      });
    }

    this.#write(encodeFrame(FrameType.exec, id, payload));
    if (this.#closed) this.#streams.get(id)?.fail(this.#closed);

    return {
      stream: id,
      started: started.promise,
      stdout,
      stderr,
      stdin,
      exit: exit.promise,
      signal: (signal) => {
        const n = signalNumber(signal);
        if (!finished) this.#write(encodeFrame(FrameType.signal, id, encodeFields([[Tag.signal, n]])));
      },
      resize: (rows, cols) => {
        if (!finished) this.#write(encodeFrame(FrameType.resize, id, encodeFields([[Tag.rows, Math.trunc(rows)], [Tag.cols, Math.trunc(cols)]])));
      },
    };
  }

  /** Runs a program to its end and collects its output. */
  async run(options: RunOptions): Promise<RunResult> {
    const { input, ...rest } = options;
    const handle = this.exec({ ...rest, stdin: input !== undefined || rest.stdin === true });
    const collect = (readable: Readable): Promise<Buffer> => new Promise((resolve) => {
      const chunks: Buffer[] = [];
      readable.on('data', (chunk: Buffer) => chunks.push(chunk));
      readable.on('end', () => resolve(Buffer.concat(chunks)));
      readable.on('close', () => resolve(Buffer.concat(chunks)));
    });
    const stdout = collect(handle.stdout);
    const stderr = collect(handle.stderr);
    if (handle.stdin) {
      handle.stdin.on('error', () => undefined);
      handle.stdin.end(input === undefined ? undefined : Buffer.from(input));
    }
    await handle.started;
    const status = await handle.exit;
    return { ...status, stdout: await stdout, stderr: await stderr };
  }

  async readFile(path: string): Promise<Buffer> {
    const done = deferred<Buffer>();
    const chunks: Buffer[] = [];
    this.#request(FrameType.readFile, [[Tag.path, path]], {
      frame: (frame, fields) => {
        if (frame.type === FrameType.stdout) chunks.push(frame.payload);
        else if (frame.type === FrameType.exit) done.resolve(Buffer.concat(chunks));
        else if (frame.type === FrameType.error) done.reject(agentErrorFrom(fields()));
      },
      fail: (error) => done.reject(error),
    });
    return done.promise;
  }

  /** Replaces a file atomically (a temporary file renamed over it). */
  async writeFile(path: string, data: string | Uint8Array, options: WriteFileOptions = {}): Promise<void> {
    const done = deferred<void>();
    const fields: FieldInput[] = [[Tag.path, path], [Tag.mode, (options.mode ?? 0o644).toString(8)]];
    if (options.uid !== undefined) fields.push([Tag.uid, options.uid]);
    if (options.gid !== undefined) fields.push([Tag.gid, options.gid]);
    if (options.mkdirs) fields.push([Tag.mkdirs, '1']);
    const id = this.#request(FrameType.writeFile, fields, {
      frame: (frame, f) => {
        if (frame.type === FrameType.exit) done.resolve();
        else if (frame.type === FrameType.error) done.reject(agentErrorFrom(f()));
      },
      fail: (error) => done.reject(error),
    });
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.length);
    // An early ERROR (e.g. a missing folder) ends the upload.
    if (bytes.length > 0 && !done.settled) await this.#sendData(id, bytes, () => done.settled);
    if (!done.settled) this.#write(encodeFrame(FrameType.stdin, id));
    return done.promise;
  }

  async info(): Promise<AgentInfo> {
    const done = deferred<AgentInfo>();
    this.#request(FrameType.info, [], {
      frame: (frame, fields) => {
        const f = fields();
        if (frame.type === FrameType.info) {
          done.resolve({
            version: fieldText(f, Tag.version) ?? '',
            uptimeMs: fieldNumber(f, Tag.uptimeMs) ?? 0,
            pid1: fieldText(f, Tag.pid1) === '1',
            loadavg: fieldText(f, Tag.loadavg) ?? '',
          });
        } else if (frame.type === FrameType.error) {
          done.reject(agentErrorFrom(f));
        }
      },
      fail: (error) => done.reject(error),
    });
    return done.promise;
  }

  /**
   * Asks the guest to shut down. Resolves when the agent has acknowledged it
   * or the connection closed (the machine going away closes it).
   */
  async poweroff(): Promise<void> {
    const done = deferred<void>();
    this.#request(FrameType.poweroff, [], {
      frame: (frame, fields) => {
        if (frame.type === FrameType.error) done.reject(agentErrorFrom(fields()));
        else if (frame.type === FrameType.exit) done.resolve();
      },
      fail: () => done.resolve(),
    });
    return done.promise;
  }

  /** Ends the connection: pending requests reject, and the agent kills what this connection started (detached programs excepted). */
  close(): void {
    if (this.#closed) return;
    this.#fail(closedError());
    this.#duplex.end();
  }

  #request(type: number, fields: Iterable<FieldInput>, sink: StreamSink): number {
    const id = this.#allocate();
    this.#streams.set(id, sink);
    this.#write(encodeFrame(type, id, encodeFields(fields)));
    if (this.#closed) {
      this.#streams.delete(id);
      sink.fail(this.#closed);
    }
    return id;
  }

  #allocate(): number {
    for (;;) {
      const id = this.#nextStream;
      this.#nextStream = id >= MAX_STREAM_ID ? 1 : id + 1;
      if (!this.#streams.has(id)) return id;
    }
  }

  #write(frame: Buffer): boolean {
    if (this.#closed || this.#duplex.destroyed || this.#duplex.writableEnded) return true;
    return this.#duplex.write(frame);
  }

  /** Sends data as STDIN frames, waiting whenever the connection's buffer is full. */
  async #sendData(id: number, data: Buffer, stop: () => boolean = () => false): Promise<void> {
    for (let offset = 0; offset < data.length; offset += DATA_CHUNK) {
      if (this.#closed || stop()) return;
      const ok = this.#write(encodeFrame(FrameType.stdin, id, data.subarray(offset, offset + DATA_CHUNK)));
      if (!ok) await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    }
  }

  #wakeWriters(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Hands output to its Readable; a consumer that falls behind pauses the whole connection. */
  #deliver(id: number, readable: Readable, chunk: Buffer): void {
    if (readable.destroyed) return;
    // A stream nobody has started to read yet (readableFlowing null) buffers
    // without pausing, so that a caller awaiting only `exit` cannot stall
    // every other stream of the connection.
    if (!readable.push(chunk) && readable.readableFlowing !== null) {
      this.#blocked.add(id);
      this.#duplex.pause();
    }
  }

  #unblock(id: number): void {
    if (this.#blocked.delete(id) && this.#blocked.size === 0 && !this.#closed) this.#duplex.resume();
  }

  #onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (error) {
      this.#fail(error as VmError);
      this.#duplex.destroy();
      return;
    }
    for (const frame of frames) this.#dispatch(frame);
  }

  #dispatch(frame: Frame): void {
    let decoded: Field[] | undefined;
    const fields = (): Field[] => {
      decoded ??= decodeFields(frame.payload);
      return decoded;
    };
    try {
      if (frame.stream === CONNECTION_STREAM) {
        if (frame.type === FrameType.hello) {
          const f = fields();
          const version = fieldText(f, Tag.version) ?? '';
          const waiter = this.#hellos.shift();
          if (version !== PROTOCOL_VERSION) {
            waiter?.reject(new VmError(`the workspace's agent speaks protocol version ${JSON.stringify(version)}, cs speaks ${PROTOCOL_VERSION}`, {
              code: 'AGENT_VERSION',
              suggestions: ['recreate the workspace with this version of cs'],
            }));
            return;
          }
          waiter?.resolve({ version, agent: fieldText(f, Tag.agent) ?? '', uptimeMs: fieldNumber(f, Tag.uptimeMs) ?? 0 });
        } else if (frame.type === FrameType.error) {
          const error = agentErrorFrom(fields());
          this.#agentMessage = error.message;
          this.#hellos.shift()?.reject(error);
        }
        return;
      }
      // Frames of streams this client does not know (one that a previous
      // connection opened) are dropped.
      const sink = this.#streams.get(frame.stream);
      if (!sink) return;
      if (endsStream(frame.type)) this.#streams.delete(frame.stream);
      sink.frame(frame, fields);
    } catch (error) {
      this.#fail(error as VmError);
      this.#duplex.destroy();
    }
  }

  #fail(error: VmError): void {
    if (this.#closed) return;
    this.#closed = error;
    const sinks = [...this.#streams.values()];
    this.#streams.clear();
    for (const sink of sinks) sink.fail(error);
    for (const hello of this.#hellos.splice(0)) hello.reject(error);
    this.#blocked.clear();
    this.#wakeWriters();
  }
}
