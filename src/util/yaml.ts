/**
 * The yaml package, loaded when first needed (most commands never read or
 * write YAML). In the bundled command line (scripts/bundle.mjs) a dynamic
 * import of a CommonJS package has only its `default`; unbundled, node also
 * offers the named exports. Either way the caller gets the module.
 */
export async function loadYaml(): Promise<typeof import('yaml')> {
  const mod = (await import('yaml')) as typeof import('yaml') & { default?: typeof import('yaml') };
  return typeof mod.parseDocument === 'function' ? mod : (mod.default as typeof import('yaml'));
}
