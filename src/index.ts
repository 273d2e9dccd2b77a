/**
 * cs as a library: every capability the CLI offers, without the CLI.
 */
export * from './definition/index.js';
export * from './util/errors.js';
export { formatReference, isOciReference, parseReference, type Reference } from './oci/reference.js';
