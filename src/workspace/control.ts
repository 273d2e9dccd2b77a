import { join } from 'node:path';
import { VmError } from '../util/errors.js';
import { AgentClient } from '../vm/agent-client.js';
import { decodeFields, encodeFields, encodeFrame, fieldText, FrameDecoder, FrameType, Tag } from '../vm/protocol.js';
import { connectUnix } from './connect.js';
import { ControlTag, ControlType } from './mux.js';
import { FILES, readRecord, readRun, statusOf } from './state.js';

/**
 * Talking to a running workspace: an AgentClient through its supervisor's
 * control socket, and the supervisor's own requests (stop, port forward).
 */

export async function openAgent(dir: string, label: string): Promise<AgentClient> {
  const record = await readRecord(dir);
  if (!record) throw new VmError(`workspace ${label} does not exist`);
  const status = statusOf(record, await readRun(dir));
  if (status !== 'running' && status !== 'starting' && status !== 'failed') {
    throw new VmError(`workspace ${label} is ${status}`, {
      code: 'NOT_RUNNING',
      suggestions: status === 'suspended' ? [`resume it with \`cs sandbox resume ${record.sandbox}\``] : [`see \`cs sandbox show ${record.sandbox}\``],
    });
  }
  const socket = await connectUnix(join(dir, FILES.controlSocket)).catch((error: Error) => {
    throw new VmError(`cannot reach workspace ${label}: ${error.message}`, { cause: error, suggestions: [`see \`cs sandbox show ${record.sandbox}\``] });
  });
  const client = new AgentClient(socket);
  await client.hello();
  return client;
}

/** Sends one supervisor request and waits for its EXIT or ERROR. */
async function request(dir: string, type: number, fields: [number, string][]): Promise<void> {
  const socket = await connectUnix(join(dir, FILES.controlSocket));
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder();
    let done = false;
    socket.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        if (frame.stream !== 1) continue;
        done = true;
        socket.destroy();
        if (frame.type === FrameType.error) {
          reject(new VmError(fieldText(decodeFields(frame.payload), Tag.message) ?? 'the supervisor refused'));
        } else resolve();
      }
    });
    // A stop ends with the supervisor exiting: a closed socket is success then.
    socket.on('close', () => (done ? undefined : type === ControlType.STOP ? resolve() : reject(new VmError('the supervisor closed the connection'))));
    socket.on('error', (error) => (done ? undefined : reject(error)));
    socket.write(encodeFrame(type, 1, encodeFields(fields)));
  });
}

export async function requestStop(dir: string, options: { deleting: boolean }): Promise<void> {
  await request(dir, ControlType.STOP, options.deleting ? [[ControlTag.DELETING, '1']] : []);
}

export async function requestForward(dir: string, forward: { protocol: 'tcp' | 'udp'; hostPort: number; guestPort: number }): Promise<void> {
  await request(dir, ControlType.FORWARD, [
    [ControlTag.PROTO, forward.protocol],
    [ControlTag.HOST_PORT, String(forward.hostPort)],
    [ControlTag.GUEST_PORT, String(forward.guestPort)],
  ]);
}

export async function requestUnforward(dir: string, forward: { protocol: 'tcp' | 'udp'; hostPort: number; guestPort: number }): Promise<void> {
  await request(dir, ControlType.UNFORWARD, [
    [ControlTag.PROTO, forward.protocol],
    [ControlTag.HOST_PORT, String(forward.hostPort)],
    [ControlTag.GUEST_PORT, String(forward.guestPort)],
  ]);
}

/** Has the running VM write to `file` (an overlay in `disk/` on its current top) from now on. */
export async function requestDiskSwitch(dir: string, file: string): Promise<void> {
  await request(dir, ControlType.DISK_SNAPSHOT, [[ControlTag.FILE, file]]);
}
