export * from './issues.js';
export * from './model.js';
export { loadSandbox, parseDefinition, validateBytes, validateFile, validatePaths } from './load.js';
export type { FileResult, ValidationReport } from './load.js';
export { MAX_DEFINITION_BYTES, findDefinitionFiles, kindOf, type DefinitionKind } from './source.js';
export { schemaPath } from './schema.js';
export { parseDuration, parseSize } from '../util/units.js';
