import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { acquireLock, type Lock } from '../util/lock.js';
import { AgentClient } from '../vm/agent-client.js';
import { fieldText } from '../vm/protocol.js';
import { QmpClient } from '../vm/qmp.js';
import { DISK_DIR, formatOf, isDiskFile, topPath } from './disk.js';
import { hostTscKhz, QEMU_BINARY, qemuArgs } from '../vm/qemu.js';
import { connectUnix } from './connect.js';
import { serveHostRequests } from './host-requests.js';
import { ControlTag, ControlType, Mux } from './mux.js';
import { qemuProtocol } from './ports.js';
import { appendWorkspaceLog, FILES, readRecord, specHash, readRun, supervisorAlive, writeRun, type RunRecord, type WorkspaceRecord } from './state.js';
import type { StepContext } from './steps.js';

/**
 * The supervisor: one detached process per running workspace. It starts
 * QEMU as its child (so it learns of its death at once), holds the single
 * host end of the agent's virtio-serial port and shares it with every client
 * through the control socket (see mux.ts), runs the start-up steps, and on a
 * stop request runs the suspend hook and powers the guest off cleanly.
 * Everything it learns goes to run.json, which `cs sandbox show` reads.
 */

const AGENT_TIMEOUT_MS = 5 * 60_000;

/** One QMP conversation with the workspace's QEMU: connect, handshake, `fn`, close. */
async function withQmp<T>(dir: string, fn: (qmp: QmpClient) => Promise<T>): Promise<T> {
  const qmp = new QmpClient(await connectUnix(join(dir, FILES.qmpSocket)));
  try {
    await qmp.handshake();
    return await fn(qmp);
  } finally {
    qmp.close();
  }
}

export async function supervise(dir: string): Promise<void> {
  process.chdir(dir);
  // The control and agent sockets run commands as root in the guest: only
  // their owner may connect (QEMU, our child, inherits this too).
  process.umask(0o077);
  const record = await readRecord(dir);
  if (!record) throw new Error(`no workspace record in ${dir}`);
  let lock: Lock;
  try {
    // A supervisor that just recorded its exit may still be releasing the
    // lock when a resume starts the next one: wait a little for it.
    lock = await acquireLock(join(dir, 'supervisor.lock'), { purpose: 'supervising this workspace', timeoutMs: 5000 });
  } catch {
    log(dir, 'another supervisor is running this workspace; exiting');
    return;
  }
  const t0 = Date.now();
  const rootGeneration = record.rootGeneration ?? 0;
  const state: RunRecord = {
    supervisorPid: process.pid,
    startedAt: new Date(t0).toISOString(),
    boot: { lowers: record.lowers, cpus: record.cpus, memoryMiB: record.memoryMiB, kernel: record.kernel.boot ?? record.kernel.vmlinuz, rootGeneration, spec: specHash(record.spec) },
    timings: {},
    phase: 'booting',
    steps: [],
  };
  const save = (): Promise<void> => writeRun(dir, state).catch(() => undefined);
  const mark = (name: string): void => {
    state.timings[name] = Date.now() - t0;
  };
  await save();

  for (const name of [FILES.agentSocket, FILES.hostSocket, FILES.qmpSocket, FILES.controlSocket]) {
    try {
      unlinkSync(name);
    } catch {
      // not there
    }
  }
  const args = qemuArgs({
    accel: record.accel,
    cpus: record.cpus,
    memoryMiB: record.memoryMiB,
    kernel: record.kernel.boot ?? record.kernel.vmlinuz,
    initrd: record.initramfs,
    lowers: record.lowers,
    disk: topPath(record),
    diskFormat: formatOf(topPath(record)),
    agentSocket: FILES.agentSocket,
    hostSocket: FILES.hostSocket,
    qmpSocket: FILES.qmpSocket,
    consoleLog: FILES.console,
    hostname: record.name,
    settings: { root: String(rootGeneration) },
    network: true,
    tscKhz: hostTscKhz(),
    forwards: record.ports.map((p) => ({ protocol: qemuProtocol(p.protocol), hostAddress: '127.0.0.1', hostPort: p.hostPort, guestPort: p.guestPort })),
  });
  // QEMU truncates the console log at start: it always holds this boot only.
  const qemu: ChildProcess = spawn(QEMU_BINARY, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  mark('qemuSpawned');
  let stopping = false;
  let stderr = '';
  qemu.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString('utf8')).slice(-4000);
    log(dir, `qemu: ${c.toString('utf8').trimEnd()}`);
  });
  if (qemu.pid) state.qemuPid = qemu.pid;
  await save();

  let control: Server | undefined;
  let mux: Mux | undefined;
  const exited = new Promise<void>((resolve) => {
    qemu.on('exit', (code, signal) => {
      state.exit = { code, signal, at: new Date().toISOString(), expected: stopping };
      if (!stopping) {
        state.phase = 'failed';
        const fatal = guestFatal(dir);
        state.error = fatal ?? `the VM stopped unexpectedly (QEMU ${signal ? `killed by ${signal}` : `exit code ${code}`})${stderr ? `: ${stderr.trim().split('\n').slice(-3).join(' ')}` : ''}`;
      } else {
        state.phase = 'stopped';
      }
      resolve();
    });
    qemu.on('error', (error) => {
      state.exit = { code: null, signal: null, at: new Date().toISOString(), expected: false };
      state.phase = 'failed';
      state.error = `cannot start ${QEMU_BINARY}: ${error.message}`;
      resolve();
    });
  });

  const finish = async (): Promise<void> => {
    await exited;
    mux?.closeClients();
    control?.close();
    await save();
    await lock.release();
    process.exit(0);
  };
  void finish();

  const stop = async (reason: 'suspend' | 'delete'): Promise<void> => {
    if (stopping) return exited;
    state.phase = 'stopping';
    await save();
    if (mux && reason) {
      const client = await internalClient(dir).catch(() => undefined);
      if (client) {
        const ctx = stepContext(dir, record, client, state, save);
        const hook = reason === 'delete' ? record.spec.lifecycle.onDelete : record.spec.lifecycle.onSuspend;
        const { runLifecycle } = await import('./steps.js');
        await runLifecycle(ctx, reason === 'delete' ? 'on_delete' : 'on_suspend', hook).catch((error: Error) => log(dir, `stop hook failed: ${error.message}`));
        client.close();
      }
    }
    stopping = true;
    mux?.poweroff();
    const timer = setTimeout(() => qemu.kill('SIGTERM'), 20_000);
    const killer = setTimeout(() => qemu.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
    clearTimeout(killer);
  };
  process.on('SIGTERM', () => void stop('suspend'));
  process.on('SIGINT', () => void stop('suspend'));

  // The agent's socket appears once QEMU has set up its devices.
  let agentSocket: Socket | undefined;
  while (!agentSocket && !state.exit) {
    agentSocket = await connectUnix(join(dir, FILES.agentSocket)).catch(() => undefined);
    if (!agentSocket) await new Promise((r) => setTimeout(r, 20));
  }
  if (!agentSocket) return;
  agentSocket.on('error', () => undefined);
  mux = new Mux(agentSocket, async (type, fields) => {
    if (type === ControlType.STOP) {
      const deleting = fieldText(fields, ControlTag.DELETING) === '1';
      await stop(deleting ? 'delete' : 'suspend');
      return;
    }
    if (type === ControlType.FORWARD || type === ControlType.UNFORWARD) {
      const proto = fieldText(fields, ControlTag.PROTO) ?? 'tcp';
      const hostPort = Number(fieldText(fields, ControlTag.HOST_PORT));
      const guestPort = Number(fieldText(fields, ControlTag.GUEST_PORT));
      if (!(proto === 'tcp' || proto === 'udp') || !Number.isInteger(hostPort) || !Number.isInteger(guestPort)) throw new Error('bad port forward request');
      const command = type === ControlType.FORWARD ? `hostfwd_add net0 ${proto}:127.0.0.1:${hostPort}-:${guestPort}` : `hostfwd_remove net0 ${proto}:127.0.0.1:${hostPort}`;
      const out = await withQmp(dir, (qmp) => qmp.hmp(command));
      // hostfwd_remove answers "host forwarding rule for ... removed" (or "not found": gone already, which is what was asked).
      if (out.trim() !== '' && !/ (removed|not found)\s*$/.test(out.trim())) throw new Error(out.trim());
      return;
    }
    if (type === ControlType.DISK_SNAPSHOT) {
      const file = fieldText(fields, ControlTag.FILE) ?? '';
      if (!isDiskFile(file) || !existsSync(join(dir, DISK_DIR, file))) throw new Error(`no disk file "${file}" to switch to`);
      // "existing": cs made the overlay (backed by the current top, by its plain name); QEMU only opens it and writes there from now on.
      await withQmp(dir, (qmp) => qmp.execute('blockdev-snapshot-sync', { device: 'disk', 'snapshot-file': resolve(dir, DISK_DIR, file), format: 'qcow2', mode: 'existing' }));
      log(dir, `disk switched to ${file}`);
      return;
    }
    throw new Error(`unknown control request ${type}`);
  });
  const agentHello = await Promise.race([
    mux.hello().then(() => true),
    exited.then(() => false),
    new Promise<boolean>((r) => setTimeout(() => r(false), AGENT_TIMEOUT_MS)),
  ]);
  if (!agentHello) {
    if (!state.exit) {
      state.phase = 'failed';
      state.error = `the guest agent did not answer within ${AGENT_TIMEOUT_MS / 1000} s`;
      await save();
    }
    return;
  }
  mark('agentReady');

  // Requests from inside the guest (`cs snapshot create` there) come on their own port.
  const hostPort = await connectUnix(join(dir, FILES.hostSocket)).catch(() => undefined);
  if (hostPort) serveHostRequests(hostPort, `${record.sandbox}/${record.name}`, (line) => log(dir, line));

  control = createServer((socket) => mux?.attach(socket));
  await new Promise<void>((resolve, reject) => {
    control?.once('error', reject);
    control?.listen(FILES.controlSocket, resolve);
  });
  state.phase = 'starting';
  await save();
  log(dir, `agent ready after ${state.timings['agentReady']} ms`);

  // The start-up steps read definitions (ajv and the schemas): loaded only
  // now, so they do not delay QEMU's start.
  const { isFirstBoot, startWorkspace } = await import('./steps.js');
  // wait_for: start-up begins once the named workspaces are ready.
  for (const other of record.spec.waitFor) {
    const waitError = await waitForSibling(dir, other, state, save);
    if (waitError) {
      state.phase = 'failed';
      state.error = waitError;
      appendWorkspaceLog(dir, `FAILED: ${waitError}`);
      await save();
      return;
    }
  }
  const client = await internalClient(dir);
  // The guest's clock came from the RTC (whole seconds) during boot: set it
  // to the host's now, before anything compares file times.
  await client.run({ argv: ['/run/cs/busybox', 'date', '-u', '-s', `@${Math.round(Date.now() / 1000)}`], env: {}, user: 'root' }).catch(() => undefined);
  const ctx = stepContext(dir, record, client, state, save);
  try {
    const firstBoot = await isFirstBoot(client);
    await startWorkspace({ ...ctx, firstBoot });
    if (!stopping) {
      state.phase = 'ready';
      mark('ready');
    }
  } catch (error) {
    if (!stopping) {
      state.phase = 'failed';
      state.error = (error as Error).message;
      appendWorkspaceLog(dir, `FAILED: ${state.error}`);
    }
  } finally {
    client.close();
  }
  await save();
}

/** Waits until another workspace of the sandbox is ready; returns why not, if it never will be. */
async function waitForSibling(dir: string, name: string, state: RunRecord, save: () => Promise<void>): Promise<string | undefined> {
  const step = { name: `wait for ${name}`, startedAt: new Date().toISOString() } as RunRecord['steps'][number];
  state.steps.push(step);
  await save();
  appendWorkspaceLog(dir, `==> wait for ${name}`);
  const other = join(dir, '..', name);
  const deadline = Date.now() + 30 * 60_000;
  let why: string | undefined;
  for (;;) {
    const record = await readRecord(other);
    const run = await readRun(other);
    if (!record) why = `wait_for: workspace "${name}" does not exist`;
    else if (run?.phase === 'ready' && supervisorAlive(run)) break;
    else if (run?.phase === 'failed') why = `wait_for: workspace "${name}" failed: ${run.error ?? 'unknown error'}`;
    else if (record.desired === 'suspended') why = `wait_for: workspace "${name}" is suspended`;
    else if (Date.now() > deadline) why = `wait_for: workspace "${name}" was not ready within 30 minutes`;
    if (why) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  step.ok = why === undefined;
  step.endedAt = new Date().toISOString();
  if (why) step.error = why;
  await save();
  return why;
}

async function internalClient(dir: string): Promise<AgentClient> {
  const client = new AgentClient(await connectUnix(join(dir, FILES.controlSocket)));
  await client.hello();
  return client;
}

function stepContext(dir: string, record: WorkspaceRecord, client: AgentClient, state: RunRecord, save: () => Promise<void>): StepContext {
  return {
    client,
    record,
    firstBoot: false,
    log: (line) => appendWorkspaceLog(dir, line),
    siblingPorts: async (workspace) => (await readRecord(join(dir, '..', workspace)))?.ports,
    step: async (name, fn) => {
      const entry = { name, startedAt: new Date().toISOString() } as RunRecord['steps'][number];
      state.steps.push(entry);
      await save();
      appendWorkspaceLog(dir, `==> ${name}`);
      try {
        const result = await fn();
        entry.ok = true;
        return result;
      } catch (error) {
        entry.ok = false;
        entry.error = (error as Error).message;
        throw error;
      } finally {
        entry.endedAt = new Date().toISOString();
        await save();
      }
    },
  };
}

/** The reason the guest's init gave before powering off, if it gave one. */
function guestFatal(dir: string): string | undefined {
  try {
    const text = readFileSync(join(dir, FILES.console), 'utf8');
    const match = /cs-init\[[^\]]*\]: FATAL: (.*)/.exec(text);
    return match?.[1] ? `the workspace could not start: ${match[1].trim()}` : undefined;
  } catch {
    return undefined;
  }
}


/** The supervisor's own diagnostics. */
function log(dir: string, line: string): void {
  appendFileSync(join(dir, FILES.supervisorLog), `${new Date().toISOString()} ${line}\n`);
}
