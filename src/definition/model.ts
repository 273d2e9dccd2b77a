import type { Reference } from '../oci/reference.js';

/**
 * The typed model every later stage consumes: a valid definition with
 * defaults applied and names normalised. Nothing downstream reads YAML.
 */

export interface EnvVar {
  name: string;
  value: string;
}

/** A snapshot named in cs's catalogue, or an image used directly. */
export type SnapshotRef = { kind: 'name'; name: string } | { kind: 'oci'; reference: Reference; text: string };

export type KernelRef = { kind: 'default' } | { kind: 'oci'; reference: Reference; text: string };

export interface RunSpec {
  cmd: string;
  /** Working directory; undefined means the home folder (or the repo, for manifests). */
  dir?: string;
  env: EnvVar[];
}

export interface Checkout {
  /** Relative to the home folder, normalised (no `.`, no trailing `/`). */
  path: string;
  /** Where it goes when not under the home folder (`cs workspace import` clones into /workspace); absolute. */
  dest?: string;
  repo: { git: string };
  versionSpec?: string;
  historyDepth?: number;
}

export type Protocol = 'TCP' | 'UDP' | 'HTTP' | 'HTTPS' | 'GRPC';

export interface Port {
  name: string;
  port: number;
  protocol: Protocol;
}

export interface PortForwardRule {
  local: { host: string; port: number };
  remote: { target: string; port: number; portName?: string };
}

export type SystemFile =
  | { path: string; owner?: string; mode?: number; kind: 'content'; content: string }
  | { path: string; owner?: string; mode?: number; kind: 'template'; template: string }
  | { path: string; owner?: string; mode?: number; kind: 'symlink'; target: string };

export interface Daemon {
  name: string;
  run: RunSpec;
}

export type Probe =
  | { name?: string; kind: 'command'; command: string }
  | { name?: string; kind: 'tcp'; port: number }
  | { name?: string; kind: 'http'; port: number; path: string };

export interface Hook {
  run: RunSpec;
  timeoutMs?: number;
}

export interface Resources {
  cpus: number;
  memoryMiB: number;
  diskBytes: number;
}

export interface Workspace {
  /** Lower-cased: names are unique case-insensitively. */
  name: string;
  description: string;
  baseSnapshot?: SnapshotRef;
  homeSnapshot?: SnapshotRef;
  kernel: KernelRef;
  /** Sandbox env, then the workspace's own; a later entry with the same name wins. */
  env: EnvVar[];
  checkouts: Checkout[];
  ports: Port[];
  portForwardRules: PortForwardRule[];
  system: { files: SystemFile[]; daemons: Daemon[] };
  probes: { readiness: Probe[] };
  waitFor: string[];
  lifecycle: { onCreate?: Hook; onSuspend?: Hook; onResume?: Hook; onDelete?: Hook };
  resources: Resources;
  /** The workspace user's home folder; checkouts and home snapshots land here. */
  home: string;
}

export interface Sandbox {
  /** From the top-level `name`, else the file name without extension; lower-cased. */
  name: string;
  file: string;
  env: EnvVar[];
  workspaces: Workspace[];
}

export interface Manifest {
  file: string;
  env: EnvVar[];
  hooks: { postCheckout?: RunSpec; build?: RunSpec };
  daemons: Daemon[];
  jobs: { name: string; run: RunSpec; schedule: string }[];
}

export const DEFAULT_RESOURCES: Resources = {
  cpus: 1,
  memoryMiB: 1024,
  diskBytes: 10 * 1024 * 1024 * 1024,
};

/** The user a workspace runs people's commands as, as in Crafting. */
export const WORKSPACE_USER = 'owner';
export const WORKSPACE_HOME = `/home/${WORKSPACE_USER}`;
