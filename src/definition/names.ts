/**
 * The naming rules of definitions, in one place so messages and checks agree.
 */

/** Workspace, port, daemon and sandbox names: they become host names and labels. */
export const RESOURCE_NAME = /^[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?$/;
export const RESOURCE_NAME_MAX = 63;
export const RESOURCE_NAME_RULE =
  "must start with a letter, contain only letters, digits and '-', not end with '-', and be at most 63 characters";

/** Snapshot names (the catalogue's rule, shared with `cs snapshot create`). */
export const SNAPSHOT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const SNAPSHOT_NAME_RULE =
  "a snapshot name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit";

/** POSIX-style environment variable names. */
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function isResourceName(name: string): boolean {
  return name.length <= RESOURCE_NAME_MAX && RESOURCE_NAME.test(name);
}
