import type { Socket } from 'node:net';
import { decodeFields, encodeFields, encodeFrame, endsStream, FrameDecoder, FrameType, Tag, type Field, type Frame } from '../vm/protocol.js';

/**
 * One agent connection shared by many clients. The virtio-serial port has a
 * single host end, held by the supervisor; every `cs exec`, `cs ssh` and the
 * supervisor's own start-up steps connect to the supervisor's control socket
 * and speak the same cs-agent/1 protocol. Their stream ids are rewritten to
 * ids unique on the agent connection and back, so clients never see each
 * other. A client that goes away takes its running commands with it (they
 * get SIGKILL), as a closed terminal would.
 *
 * Frame types from 0x20 up are the supervisor's own (stop, port forward);
 * they are answered here through `onControl` and never reach the agent.
 */

const REQUESTS = new Set<number>([FrameType.exec, FrameType.readFile, FrameType.writeFile, FrameType.info]);
const FOLLOW_UPS = new Set<number>([FrameType.stdin, FrameType.signal, FrameType.resize]);

/** Bytes a client may leave unread before the agent connection is paused. */
const CLIENT_BACKLOG = 8 * 1024 * 1024;

export const ControlType = {
  STOP: 0x21,
  FORWARD: 0x22,
  /** Switch the VM's disk to a new, empty overlay (a restore point of a running workspace). */
  DISK_SNAPSHOT: 0x23,
  /** Remove a forward added by FORWARD or at boot (a port dropped from the definition). */
  UNFORWARD: 0x24,
} as const;

/** Field tags of the supervisor's requests (above the agent's own tags). */
export const ControlTag = {
  DELETING: 100,
  PROTO: 101,
  HOST_PORT: 102,
  GUEST_PORT: 103,
  FILE: 104,
} as const;

interface Route {
  client: ClientConn;
  local: number;
}

interface ClientConn {
  socket: Socket;
  streams: Map<number, number>; // local id -> global id
  closed: boolean;
}

export type ControlHandler = (type: number, fields: readonly Field[]) => Promise<void>;

export class Mux {
  private readonly routes = new Map<number, Route>();
  private nextId = 1;
  private helloFields: Buffer | undefined;
  private helloWaiters: ((payload: Buffer) => void)[] = [];
  private readonly clients = new Set<ClientConn>();

  constructor(
    private readonly agent: Socket,
    private readonly onControl: ControlHandler,
  ) {
    const decoder = new FrameDecoder();
    agent.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) this.fromAgent(frame);
    });
  }

  /** Greets the agent; resolves with its HELLO payload once it answers. */
  hello(): Promise<Buffer> {
    const answered = new Promise<Buffer>((resolve) => this.helloWaiters.push(resolve));
    this.agent.write(encodeFrame(FrameType.hello, 0, encodeFields([[Tag.version, '1']])));
    return answered;
  }

  private fromAgent(frame: Frame): void {
    if (frame.stream === 0) {
      if (frame.type === FrameType.hello) {
        this.helloFields = frame.payload;
        for (const w of this.helloWaiters.splice(0)) w(frame.payload);
      }
      return;
    }
    const route = this.routes.get(frame.stream);
    if (!route) return;
    const terminal = endsStream(frame.type);
    if (terminal) {
      this.routes.delete(frame.stream);
      route.client.streams.delete(route.local);
    }
    if (!route.client.closed) {
      route.client.socket.write(encodeFrame(frame.type, route.local, frame.payload));
      this.throttle();
    }
  }

  /**
   * Backpressure: while a client has more than CLIENT_BACKLOG bytes it has
   * not taken, the agent connection is paused (the agent then holds its
   * programs' output, up to its own cap) instead of this process buffering
   * without bound. Every client waits meanwhile: a rare case, bounded memory.
   */
  private throttle(): void {
    let backedUp = false;
    for (const c of this.clients) if (!c.closed && c.socket.writableLength > CLIENT_BACKLOG) backedUp = true;
    if (backedUp && !this.agent.isPaused()) this.agent.pause();
    else if (!backedUp && this.agent.isPaused()) this.agent.resume();
  }

  attach(socket: Socket): void {
    const client: ClientConn = { socket, streams: new Map(), closed: false };
    this.clients.add(client);
    const decoder = new FrameDecoder();
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch {
        socket.destroy();
        return;
      }
      for (const frame of frames) this.fromClient(client, frame);
    });
    socket.on('drain', () => this.throttle());
    const gone = (): void => {
      if (client.closed) return;
      client.closed = true;
      this.clients.delete(client);
      this.throttle();
      // Commands of a client that went away are killed, as a closed terminal would.
      for (const global of client.streams.values()) {
        this.agent.write(encodeFrame(FrameType.signal, global, encodeFields([[Tag.signal, '9']])));
      }
    };
    socket.on('close', gone);
    socket.on('error', gone);
  }

  private reply(client: ClientConn, type: number, stream: number, payload: Buffer): void {
    if (!client.closed) client.socket.write(encodeFrame(type, stream, payload));
  }

  private fromClient(client: ClientConn, frame: Frame): void {
    const socket = client.socket;
    if (frame.type === FrameType.hello && frame.stream === 0) {
      this.reply(client, FrameType.hello, 0, this.helloFields ?? encodeFields([[Tag.version, '1']]));
      return;
    }
    if (frame.type >= 0x20) {
      let fields: Field[];
      try {
        fields = decodeFields(frame.payload);
      } catch {
        socket.destroy();
        return;
      }
      this.onControl(frame.type, fields).then(
        () => this.reply(client, FrameType.exit, frame.stream, encodeFields([[Tag.code, '0']])),
        (error: Error) => this.reply(client, FrameType.error, frame.stream, encodeFields([[Tag.message, error.message]])),
      );
      return;
    }
    if (frame.type === FrameType.poweroff) {
      this.reply(client, FrameType.error, frame.stream, encodeFields([[Tag.message, 'power the workspace off with `cs sandbox suspend`']]));
      return;
    }
    if (REQUESTS.has(frame.type)) {
      if (frame.stream === 0 || client.streams.has(frame.stream)) {
        this.reply(client, FrameType.error, frame.stream, encodeFields([[Tag.message, `stream ${frame.stream} is already in use`]]));
        return;
      }
      const global = this.nextId++;
      if (this.nextId > 0x7fffffff) this.nextId = 1;
      client.streams.set(frame.stream, global);
      this.routes.set(global, { client, local: frame.stream });
      this.agent.write(encodeFrame(frame.type, global, frame.payload));
      return;
    }
    if (FOLLOW_UPS.has(frame.type)) {
      const global = client.streams.get(frame.stream);
      if (global !== undefined) this.agent.write(encodeFrame(frame.type, global, frame.payload));
      return;
    }
    this.reply(client, FrameType.error, frame.stream, encodeFields([[Tag.message, `unknown frame type ${frame.type}`]]));
  }

  /** Asks the agent to power off (the supervisor's own request). */
  poweroff(): void {
    const global = this.nextId++;
    this.agent.write(encodeFrame(FrameType.poweroff, global, Buffer.alloc(0)));
  }

  closeClients(): void {
    for (const client of this.clients) client.socket.destroy();
  }
}
