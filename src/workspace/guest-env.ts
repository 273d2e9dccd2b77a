import type { EnvVar, Manifest, RunSpec, Workspace } from '../definition/model.js';
import { WORKSPACE_HOME, WORKSPACE_USER } from '../definition/model.js';

/**
 * The environment people's commands get inside a workspace. The agent gives
 * a child exactly the variables it is sent, so everything is spelled out here:
 * a login-like base, then the sandbox's and workspace's `env` (already merged
 * by the model), then a repo manifest's and a run's own.
 */

/** Last on PATH: /run/cs/bin holds the in-workspace `cs` (an image's own cs comes first). */
export const GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/cs/bin';

/** Where the initramfs leaves a static busybox inside every workspace. */
export const GUEST_BUSYBOX = '/run/cs/busybox';
export const GUEST_AGENT = '/run/cs/agent';
/** Where daemons' output goes inside a workspace (DAEMON_LOG_DIR/NAME.log). */
export const DAEMON_LOG_DIR = '/var/log/cs';

export interface GuestIdentity {
  sandbox: string;
  workspace: string;
}

export function baseEnv(identity: GuestIdentity, user: string = WORKSPACE_USER): Record<string, string> {
  const home = user === 'root' ? '/root' : user === WORKSPACE_USER ? WORKSPACE_HOME : `/home/${user}`;
  return {
    PATH: GUEST_PATH,
    HOME: home,
    USER: user,
    LOGNAME: user,
    SHELL: '/bin/sh',
    LANG: 'C.UTF-8',
    CS_SANDBOX: identity.sandbox,
    CS_WORKSPACE: identity.workspace,
  };
}

function apply(env: Record<string, string>, vars: readonly EnvVar[]): Record<string, string> {
  const out = { ...env };
  for (const v of vars) out[v.name] = expand(v.value, out);
  return out;
}

/** `$NAME` and `${NAME}` from what is defined so far; unknown names expand to nothing, as in a shell. */
export function expand(text: string, env: Readonly<Record<string, string>>): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_, a: string | undefined, b: string | undefined) => env[(a ?? b) as string] ?? '');
}

export function workspaceEnv(identity: GuestIdentity, spec: Workspace, user?: string): Record<string, string> {
  return apply(baseEnv(identity, user), spec.env);
}

export function runEnv(identity: GuestIdentity, spec: Workspace, run: RunSpec, manifest?: Manifest): Record<string, string> {
  let env = workspaceEnv(identity, spec);
  if (manifest) env = apply(env, manifest.env);
  return apply(env, run.env);
}

/** A run's working directory: absolute as given, else under `base` (home, or the repo for a manifest). */
export function runDir(run: RunSpec, base: string): string {
  if (!run.dir) return base;
  return run.dir.startsWith('/') ? run.dir : `${base}/${run.dir}`.replace(/\/+/g, '/');
}

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  /** Home and shell, on lines that have all seven fields. */
  home?: string;
  shell?: string;
}

/** The entries of an image's /etc/passwd (lines with at least name, password, uid and gid). */
export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || !f[0]) continue;
    const entry: PasswdEntry = { name: f[0], uid: Number(f[2]), gid: Number(f[3]) };
    if (f.length >= 7) {
      entry.home = f[5] || '/';
      entry.shell = f[6]?.trim() || '/bin/sh';
    }
    out.push(entry);
  }
  return out;
}
