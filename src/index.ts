/**
 * cs as a library: every capability the CLI offers, without the CLI.
 */
export * from './definition/index.js';
export * from './util/errors.js';
export { formatReference, isOciReference, parseReference, type Reference } from './oci/reference.js';
export {
  inspectImage,
  listImages,
  pruneImages,
  pullImage,
  pushImage,
  removeImages,
  type ImageDetails,
  type ImageSummary,
  type TransferResult,
} from './oci/image.js';
export { login, logout } from './oci/login.js';
export { ContentStore } from './oci/store.js';
export { importDirectory } from './snapshot/import-dir.js';
export { applyLayer, type ApplyOptions, type ApplyResult } from './layers/apply.js';
export { assemble, type AssembleOptions, type AssembleResult } from './rootfs/assemble.js';
export { buildDebianBase } from './snapshot/debian-base.js';
export { createSandbox, type CreateOptions } from './workspace/create.js';
export {
  listSandboxes,
  removeSandbox,
  resumeSandbox,
  showSandbox,
  startWorkspace,
  stopWorkspace,
  suspendSandbox,
  type SandboxResult,
  type WorkspaceSummary,
} from './workspace/lifecycle.js';
export {
  cloneWorkspace,
  createStandalone,
  importGit,
  labelWorkspace,
  listAllWorkspaces,
  removeWorkspace,
  showWorkspace,
  type StandaloneOptions,
  type WorkspaceInfo,
} from './workspace/standalone.js';
export { createRestorePoint, deleteRestorePoint, listRestorePoints, restoreRestorePoint, type RestorePointInfo } from './workspace/restore-points.js';
export { usageReport, type UsageReport, type WorkspaceUsage } from './workspace/usage.js';
export { addPortForward, execInWorkspace, showLog, type ExecOptions, type ExecResult } from './workspace/exec.js';
export { doctor, setup } from './workspace/setup.js';
export { AgentClient } from './vm/agent-client.js';
export { applyDefinitions, applyDesired, type ApplyEvent, type ApplyOptions as ReconcileOptions, type ApplyResult as ReconcileResult } from './reconcile/engine.js';
export { readDesired, type DesiredState } from './reconcile/desired.js';
export { buildPlan, type FieldChange, type Plan } from './reconcile/plan.js';
export { followRepository, watchDefinitions } from './reconcile/watch.js';
export { syncSummary, type SyncSummary } from './reconcile/status.js';
