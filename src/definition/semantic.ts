import { posix } from 'node:path';
import { isOciReference, parseReference } from '../oci/reference.js';
import type { DefinitionIssue, PathSegment } from './issues.js';
import {
  DEFAULT_RESOURCES,
  WORKSPACE_HOME,
  type Checkout,
  type Daemon,
  type EnvVar,
  type Hook,
  type KernelRef,
  type Manifest,
  type Port,
  type PortForwardRule,
  type Probe,
  type Protocol,
  type RunSpec,
  type Sandbox,
  type SnapshotRef,
  type SystemFile,
  type Workspace,
} from './model.js';
import { ENV_NAME, SNAPSHOT_NAME, SNAPSHOT_NAME_RULE } from './names.js';
import { parseDuration, parseSize } from '../util/units.js';
import { issueAt, rawScalar, type Anchor, type ParsedYaml } from './yaml-source.js';

/**
 * Checks the schema cannot express (uniqueness, references between fields,
 * paths, reference grammar), done in the same walk that builds the typed
 * model. The walk is defensive: it also runs on definitions that failed the
 * schema, so that one run reports every problem, and never trusts a shape.
 */

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const int = (v: unknown): number | undefined => (typeof v === 'number' && Number.isInteger(v) ? v : undefined);

class Checker {
  readonly issues: DefinitionIssue[] = [];
  constructor(readonly parsed: ParsedYaml) {}

  report(path: readonly PathSegment[], message: string, options: { anchor?: Anchor; inner?: number } = {}): void {
    this.issues.push(issueAt(this.parsed, path, message, options));
  }

  line(path: readonly PathSegment[]): number {
    return issueAt(this.parsed, path, '').line;
  }

  /** Report later entries whose key repeats an earlier one (case-insensitive). */
  unique<T>(entries: { value: T; key: string | undefined; path: PathSegment[] }[], what: string): void {
    const first = new Map<string, PathSegment[]>();
    for (const entry of entries) {
      if (entry.key === undefined) continue;
      const key = entry.key.toLowerCase();
      const earlier = first.get(key);
      if (earlier) this.report(entry.path, `${what} "${entry.key}" is already used at line ${this.line(earlier)}`);
      else first.set(key, entry.path);
    }
  }

  env(value: unknown, path: PathSegment[]): EnvVar[] {
    const vars: EnvVar[] = [];
    const entries: { value: EnvVar; key: string | undefined; path: PathSegment[] }[] = [];
    arr(value).forEach((item, i) => {
      const text = str(item);
      if (text === undefined || !text.includes('=')) return; // the schema reports these
      const name = text.slice(0, text.indexOf('='));
      const at = [...path, i];
      if (!ENV_NAME.test(name)) {
        this.report(at, `"${name}" is not a valid environment variable name (letters, digits and '_', not starting with a digit)`);
        return;
      }
      const env = { name, value: text.slice(name.length + 1) };
      vars.push(env);
      entries.push({ value: env, key: name, path: at });
    });
    // Environment names are case-sensitive, so compare them exactly.
    const seen = new Map<string, PathSegment[]>();
    for (const entry of entries) {
      const earlier = seen.get(entry.key ?? '');
      if (earlier) this.report(entry.path, `environment variable "${entry.key}" is already set at line ${this.line(earlier)}`);
      else seen.set(entry.key ?? '', entry.path);
    }
    return vars;
  }

  run(value: unknown, path: PathSegment[]): RunSpec {
    const o = obj(value);
    const dir = str(o['dir']);
    return { cmd: str(o['cmd']) ?? '', ...(dir === undefined ? {} : { dir }), env: this.env(o['env'], [...path, 'env']) };
  }

  /** A snapshot name or `oci://` reference; errors point at the bad part. */
  snapshotRef(value: unknown, path: PathSegment[]): SnapshotRef | undefined {
    const text = str(value);
    if (text === undefined || text === '') return undefined;
    if (isOciReference(text)) {
      const result = parseReference(text);
      if (!result.ok) {
        this.report(path, `invalid image reference: ${result.problem.message}`, { inner: result.problem.offset });
        return undefined;
      }
      return { kind: 'oci', reference: result.reference, text };
    }
    if (!SNAPSHOT_NAME.test(text)) {
      const hint = text.includes('/') || text.includes(':') ? `; to use an image directly write oci://${text}` : '';
      this.report(path, `must be a snapshot name or oci://REF: ${SNAPSHOT_NAME_RULE}${hint}`);
      return undefined;
    }
    return { kind: 'name', name: text };
  }

  kernel(value: unknown, path: PathSegment[]): KernelRef {
    const text = str(value);
    if (text === undefined || text === 'default') return { kind: 'default' };
    if (!isOciReference(text)) {
      this.report(path, 'must be "default" or oci://REF of a kernel image');
      return { kind: 'default' };
    }
    const result = parseReference(text);
    if (!result.ok) {
      this.report(path, `invalid image reference: ${result.problem.message}`, { inner: result.problem.offset });
      return { kind: 'default' };
    }
    return { kind: 'oci', reference: result.reference, text };
  }

  /** A relative path that stays inside the folder it is relative to. */
  relativePath(value: unknown, path: PathSegment[], what: string): string | undefined {
    const text = str(value);
    if (text === undefined || text === '') return undefined;
    if (text.startsWith('/') || text.startsWith('~')) {
      this.report(path, `${what} must be relative to the home folder, not "${text}"`);
      return undefined;
    }
    if (text.split('/').includes('..')) {
      this.report(path, `${what} must stay inside the home folder: ".." is not allowed`);
      return undefined;
    }
    const normal = posix.normalize(text).replace(/\/+$/, '');
    if (normal === '.' || normal === '') {
      this.report(path, `${what} must name a folder inside the home folder, not the home folder itself`);
      return undefined;
    }
    return normal;
  }

  absolutePath(value: unknown, path: PathSegment[], what: string): string | undefined {
    const text = str(value);
    if (text === undefined || text === '') return undefined;
    if (!text.startsWith('/')) {
      this.report(path, `${what} must be an absolute path, not "${text}"`);
      return undefined;
    }
    if (text.split('/').includes('..')) {
      this.report(path, `${what} must not contain ".."`);
      return undefined;
    }
    const normal = posix.normalize(text).replace(/(.)\/+$/, '$1');
    if (normal === '/') {
      this.report(path, `${what} must name a file, not "/"`);
      return undefined;
    }
    return normal;
  }

  size(value: unknown, path: PathSegment[], minimumBytes: number, what: string): number | undefined {
    if (value === undefined) return undefined;
    if (typeof value !== 'string' && typeof value !== 'number') return undefined;
    const bytes = parseSize(value);
    if (bytes === undefined) {
      // A string that fails the pattern is reported by the schema; numbers and overflowing sizes are ours.
      if (typeof value === 'number' || /^[0-9]+(\.[0-9]+)?\s*([KMGT]i?)?B?$/.test(value.trim())) this.report(path, `${what} is not a size cs can use (too large or not a whole number)`);
      return undefined;
    }
    if (bytes < minimumBytes) {
      this.report(path, `${what} must be at least ${minimumBytes / (1024 * 1024)}Mi`);
      return undefined;
    }
    return bytes;
  }

  mode(value: unknown, path: PathSegment[]): number | undefined {
    if (value === undefined) return undefined;
    // YAML 1.2 reads an unquoted 0644 as the decimal 644: use the source text.
    const raw = typeof value === 'number' ? rawScalar(this.parsed, path) ?? String(value) : str(value);
    if (raw === undefined) return undefined;
    const text = raw.trim().replace(/^["']|["']$/g, '');
    const match = /^(?:0o|0)?([0-7]{1,4})$/.exec(text);
    if (!match) {
      this.report(path, `must be octal permissions like "0644", not ${JSON.stringify(text)}`);
      return undefined;
    }
    return Number.parseInt(match[1] ?? '0', 8);
  }
}

const PROTOCOLS = new Set<Protocol>(['TCP', 'UDP', 'HTTP', 'HTTPS', 'GRPC']);

export interface CheckResult<T> {
  issues: DefinitionIssue[];
  model: T;
}

export function checkSandbox(parsed: ParsedYaml, defaultName: string): CheckResult<Sandbox> {
  const c = new Checker(parsed);
  const root = obj(parsed.value);
  const env = c.env(root['env'], ['env']);
  const rawWorkspaces = arr(root['workspaces']);

  const names = rawWorkspaces.map((w, i) => ({ value: w, key: str(obj(w)['name']), path: ['workspaces', i, 'name'] as PathSegment[] }));
  c.unique(names, 'workspace name');
  const known = new Map<string, Obj>();
  for (const w of rawWorkspaces) {
    const name = str(obj(w)['name']);
    if (name !== undefined && !known.has(name.toLowerCase())) known.set(name.toLowerCase(), obj(w));
  }

  const workspaces = rawWorkspaces.map((w, i) => checkWorkspace(c, obj(w), ['workspaces', i], env, known));
  checkWaitForCycles(c, workspaces);

  const name = (str(root['name']) ?? defaultName).toLowerCase();
  return { issues: c.issues, model: { name, file: parsed.file, env, workspaces } };
}

function checkWorkspace(c: Checker, w: Obj, at: PathSegment[], sandboxEnv: EnvVar[], known: Map<string, Obj>): Workspace {
  const p = (...rest: PathSegment[]) => [...at, ...rest];
  const name = (str(w['name']) ?? '').toLowerCase();
  const ownEnv = c.env(w['env'], p('env'));
  const env = [...sandboxEnv.filter((e) => !ownEnv.some((o) => o.name === e.name)), ...ownEnv];

  // Checkouts: relative to home, unique, not nested in one another.
  const checkouts: Checkout[] = [];
  const checkoutPaths: { path: string; at: PathSegment[] }[] = [];
  arr(w['checkouts']).forEach((raw, i) => {
    const o = obj(raw);
    const path = c.relativePath(o['path'], p('checkouts', i, 'path'), 'checkout path');
    if (path === undefined) return;
    const clash = checkoutPaths.find((e) => e.path === path || path.startsWith(`${e.path}/`) || e.path.startsWith(`${path}/`));
    if (clash) {
      const how = clash.path === path ? 'is the same as' : 'overlaps';
      c.report(p('checkouts', i, 'path'), `checkout path "${path}" ${how} "${clash.path}" at line ${c.line(clash.at)}`);
    }
    checkoutPaths.push({ path, at: p('checkouts', i, 'path') });
    const versionSpec = str(o['version_spec']);
    const depth = int(obj(o['history'])['depth']);
    checkouts.push({
      path,
      repo: { git: str(obj(o['repo'])['git']) ?? '' },
      ...(versionSpec === undefined ? {} : { versionSpec }),
      ...(depth === undefined ? {} : { historyDepth: depth }),
    });
  });

  // Ports: names unique, and one service per number and transport.
  const ports: Port[] = [];
  const rawPorts = arr(w['ports']);
  c.unique(rawPorts.map((r, i) => ({ value: r, key: str(obj(r)['name']), path: p('ports', i, 'name') })), 'port name');
  const byNumber = new Map<string, PathSegment[]>();
  rawPorts.forEach((raw, i) => {
    const o = obj(raw);
    const port = int(o['port']);
    const protocol = (str(o['protocol']) ?? 'TCP') as Protocol;
    const name = str(o['name']);
    if (port === undefined || name === undefined || !PROTOCOLS.has(protocol)) return;
    const transport = protocol === 'UDP' ? 'udp' : 'tcp';
    const key = `${transport}/${port}`;
    const earlier = byNumber.get(key);
    if (earlier) c.report(p('ports', i, 'port'), `port ${port}/${transport} is already declared at line ${c.line(earlier)}`);
    else byNumber.set(key, p('ports', i, 'port'));
    ports.push({ name: name.toLowerCase(), port, protocol });
  });

  const portForwardRules = checkForwards(c, w, at, name, known);

  // System files: absolute, one source each, unique paths.
  const system = obj(w['system']);
  const files: SystemFile[] = [];
  const filePaths = new Map<string, PathSegment[]>();
  arr(system['files']).forEach((raw, i) => {
    const o = obj(raw);
    const at2 = p('system', 'files', i);
    const path = c.absolutePath(o['path'], [...at2, 'path'], 'file path');
    const sources = (['content', 'template', 'symlink'] as const).filter((k) => o[k] !== undefined);
    if (sources.length !== 1) {
      c.report(at2, sources.length === 0
        ? 'needs one of "content", "template" or "symlink"'
        : `has ${sources.map((s) => `"${s}"`).join(' and ')}; give exactly one of "content", "template" or "symlink"`);
    }
    const mode = c.mode(o['mode'], [...at2, 'mode']);
    if (path === undefined) return;
    const earlier = filePaths.get(path);
    if (earlier) c.report([...at2, 'path'], `file "${path}" is already declared at line ${c.line(earlier)}`);
    else filePaths.set(path, [...at2, 'path']);
    const owner = str(o['owner']);
    const common = { path, ...(owner === undefined ? {} : { owner }), ...(mode === undefined ? {} : { mode }) };
    const source = sources[0];
    if (source === 'symlink') files.push({ ...common, kind: 'symlink', target: str(o['symlink']) ?? '' });
    else if (source === 'template') files.push({ ...common, kind: 'template', template: str(o['template']) ?? '' });
    else files.push({ ...common, kind: 'content', content: str(o['content']) ?? '' });
  });

  const rawDaemons = arr(system['daemons']);
  c.unique(rawDaemons.map((r, i) => ({ value: r, key: str(obj(r)['name']), path: p('system', 'daemons', i, 'name') })), 'daemon name');
  const daemons: Daemon[] = rawDaemons.map((raw, i) => ({
    name: (str(obj(raw)['name']) ?? '').toLowerCase(),
    run: c.run(obj(raw)['run'], p('system', 'daemons', i, 'run')),
  }));

  const readiness = checkProbes(c, w, at);

  // wait_for: other workspaces of this sandbox.
  const waitFor: string[] = [];
  arr(w['wait_for']).forEach((raw, i) => {
    const target = str(raw);
    if (target === undefined) return;
    const key = target.toLowerCase();
    if (key === name) c.report(p('wait_for', i), 'a workspace cannot wait for itself');
    else if (!known.has(key)) c.report(p('wait_for', i), unknownWorkspace(target, known));
    else if (waitFor.includes(key)) c.report(p('wait_for', i), `"${target}" is listed twice`);
    else waitFor.push(key);
  });

  const lifecycle: Workspace['lifecycle'] = {};
  const rawLifecycle = obj(w['lifecycle']);
  for (const [field, key] of [['on_create', 'onCreate'], ['on_suspend', 'onSuspend'], ['on_resume', 'onResume'], ['on_delete', 'onDelete']] as const) {
    if (rawLifecycle[field] === undefined) continue;
    const hook = obj(rawLifecycle[field]);
    const timeout = str(hook['timeout']);
    const timeoutMs = timeout === undefined ? undefined : parseDuration(timeout);
    const value: Hook = { run: c.run(hook['run'], p('lifecycle', field, 'run')), ...(timeoutMs === undefined ? {} : { timeoutMs }) };
    lifecycle[key] = value;
  }

  const resources = obj(w['resources']);
  const memory = c.size(resources['memory'], p('resources', 'memory'), 128 * 1024 * 1024, 'memory');
  const disk = c.size(resources['disk'], p('resources', 'disk'), 256 * 1024 * 1024, 'disk');

  const base = c.snapshotRef(w['base_snapshot'], p('base_snapshot'));
  const home = c.snapshotRef(w['home_snapshot'], p('home_snapshot'));
  return {
    name,
    description: str(w['description']) ?? '',
    ...(base === undefined ? {} : { baseSnapshot: base }),
    ...(home === undefined ? {} : { homeSnapshot: home }),
    kernel: c.kernel(w['kernel'], p('kernel')),
    env,
    checkouts,
    ports,
    portForwardRules,
    system: { files, daemons },
    probes: { readiness },
    waitFor,
    lifecycle,
    resources: {
      cpus: int(resources['cpus']) ?? DEFAULT_RESOURCES.cpus,
      memoryMiB: memory === undefined ? DEFAULT_RESOURCES.memoryMiB : Math.floor(memory / (1024 * 1024)),
      diskBytes: disk ?? DEFAULT_RESOURCES.diskBytes,
    },
    home: WORKSPACE_HOME,
  };
}

function unknownWorkspace(target: string, known: Map<string, Obj>): string {
  const names = [...known.keys()];
  return `no workspace named "${target}" in this sandbox${names.length > 0 ? ` (workspaces: ${names.join(', ')})` : ''}`;
}

function checkForwards(c: Checker, w: Obj, at: PathSegment[], self: string, known: Map<string, Obj>): PortForwardRule[] {
  const rules: PortForwardRule[] = [];
  const locals = new Map<string, PathSegment[]>();
  arr(w['port_forward_rules']).forEach((raw, i) => {
    const o = obj(raw);
    const here = [...at, 'port_forward_rules', i];
    const local = parseLocal(o['local']);
    if (o['local'] !== undefined && (typeof o['local'] === 'string' || typeof o['local'] === 'number') && !local) {
      c.report([...here, 'local'], 'must be [HOST:]PORT with a port from 1 to 65535 and HOST an IP address or "localhost", e.g. 3306 or 127.0.0.1:3306');
    }
    if (local) {
      const key = `${local.host}:${local.port}`;
      const earlier = locals.get(key);
      if (earlier) c.report([...here, 'local'], `local address ${key} is already forwarded at line ${c.line(earlier)}`);
      else locals.set(key, [...here, 'local']);
    }
    const remote = obj(o['remote']);
    const target = str(remote['target']);
    if (target === undefined) return;
    const targetKey = target.toLowerCase();
    const targetWorkspace = known.get(targetKey);
    if (targetKey === self) {
      c.report([...here, 'remote', 'target'], 'a forward must target another workspace; its own ports are already on its loopback');
      return;
    }
    if (!targetWorkspace) {
      c.report([...here, 'remote', 'target'], unknownWorkspace(target, known));
      return;
    }
    const portValue = remote['port'];
    let port: number | undefined;
    let portName: string | undefined;
    if (typeof portValue === 'number') {
      if (!Number.isInteger(portValue) || portValue < 1 || portValue > 65535) {
        c.report([...here, 'remote', 'port'], 'must be a port name or a number from 1 to 65535');
      } else port = portValue;
    } else if (typeof portValue === 'string') {
      const declared = arr(targetWorkspace['ports']).map(obj).find((e) => str(e['name'])?.toLowerCase() === portValue.toLowerCase());
      const number = declared ? int(declared['port']) : undefined;
      if (number === undefined) {
        const names = arr(targetWorkspace['ports']).map((e) => str(obj(e)['name'])).filter((n) => n !== undefined);
        c.report([...here, 'remote', 'port'], `workspace "${target}" declares no port named "${portValue}"${names.length ? ` (its ports: ${names.join(', ')})` : ''}`);
      } else {
        port = number;
        portName = portValue.toLowerCase();
      }
    }
    if (local && port !== undefined) {
      rules.push({ local, remote: { target: targetKey, port, ...(portName === undefined ? {} : { portName }) } });
    }
  });
  return rules;
}

function parseLocal(value: unknown): { host: string; port: number } | undefined {
  const text = typeof value === 'number' ? String(value) : str(value);
  if (text === undefined) return undefined;
  const match = /^(?:(localhost|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):)?(\d{1,5})$/.exec(text);
  if (!match) return undefined;
  const port = Number(match[2]);
  if (port < 1 || port > 65535) return undefined;
  const host = match[1] ?? '127.0.0.1';
  if (/^\d/.test(host) && host.split('.').some((octet) => Number(octet) > 255)) return undefined;
  return { host, port };
}

function checkProbes(c: Checker, w: Obj, at: PathSegment[]): Probe[] {
  const probes: Probe[] = [];
  const raw = arr(obj(w['probes'])['readiness']);
  c.unique(raw.map((r, i) => ({ value: r, key: str(obj(r)['name']), path: [...at, 'probes', 'readiness', i, 'name'] })), 'probe name');
  raw.forEach((r, i) => {
    const o = obj(r);
    const here = [...at, 'probes', 'readiness', i];
    const kinds = (['command', 'tcp_port', 'http_get'] as const).filter((k) => o[k] !== undefined);
    if (kinds.length !== 1) {
      c.report(here, kinds.length === 0
        ? 'a readiness probe needs one of "command", "tcp_port" or "http_get"'
        : `has ${kinds.map((k) => `"${k}"`).join(' and ')}; a probe checks exactly one of "command", "tcp_port" or "http_get"`);
      return;
    }
    const name = str(o['name'])?.toLowerCase();
    const named = name === undefined ? {} : { name };
    const command = str(o['command']);
    const tcp = int(o['tcp_port']);
    const http = obj(o['http_get']);
    const httpPort = int(http['port']);
    if (command !== undefined) probes.push({ ...named, kind: 'command', command });
    else if (tcp !== undefined) probes.push({ ...named, kind: 'tcp', port: tcp });
    else if (httpPort !== undefined) probes.push({ ...named, kind: 'http', port: httpPort, path: str(http['path']) ?? '/' });
  });
  return probes;
}

/** Report each cycle in wait_for once, at the workspace that closes it. */
function checkWaitForCycles(c: Checker, workspaces: Workspace[]): void {
  const byName = new Map(workspaces.map((w, i) => [w.name, { w, i }]));
  const state = new Map<string, 'visiting' | 'done'>();
  const reported = new Set<string>();
  const visit = (name: string, trail: string[]): void => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') {
      const cycle = [...trail.slice(trail.indexOf(name)), name];
      const key = [...cycle].sort().join(',');
      if (!reported.has(key)) {
        reported.add(key);
        const from = trail[trail.length - 1] ?? name;
        const entry = byName.get(from);
        const index = entry?.w.waitFor.indexOf(name) ?? -1;
        c.report(['workspaces', entry?.i ?? 0, 'wait_for', ...(index >= 0 ? [index] : [])], `wait_for forms a cycle: ${cycle.join(' -> ')}`);
      }
      return;
    }
    state.set(name, 'visiting');
    for (const next of byName.get(name)?.w.waitFor ?? []) visit(next, [...trail, name]);
    state.set(name, 'done');
  };
  for (const w of workspaces) visit(w.name, []);
}

export function checkManifest(parsed: ParsedYaml): CheckResult<Manifest> {
  const c = new Checker(parsed);
  const root = obj(parsed.value);
  const hooks = obj(root['hooks']);
  const named = (field: 'daemons' | 'jobs') => {
    const entries = Object.entries(obj(root[field]));
    c.unique(entries.map(([key]) => ({ value: key, key, path: [field, key] })), field === 'daemons' ? 'daemon name' : 'job name');
    return entries;
  };
  const postCheckout = hooks['post-checkout'] === undefined ? undefined : c.run(hooks['post-checkout'], ['hooks', 'post-checkout']);
  const build = hooks['build'] === undefined ? undefined : c.run(hooks['build'], ['hooks', 'build']);
  return {
    issues: c.issues,
    model: {
      file: parsed.file,
      env: c.env(root['env'], ['env']),
      hooks: { ...(postCheckout ? { postCheckout } : {}), ...(build ? { build } : {}) },
      daemons: named('daemons').map(([name, d]) => ({ name: name.toLowerCase(), run: c.run(obj(d)['run'], ['daemons', name, 'run']) })),
      jobs: named('jobs').map(([name, j]) => ({
        name: name.toLowerCase(),
        run: c.run(obj(j)['run'], ['jobs', name, 'run']),
        schedule: str(obj(j)['schedule']) ?? '',
      })),
    },
  };
}

