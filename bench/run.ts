/**
 * Benchmarks: `npm run bench -- NAME`. Each measures cs and a peer tool in
 * the same run, on this machine, and prints the ratio. They are scripts,
 * not tests: nothing here passes or fails on time.
 */
const scenarios: Record<string, () => Promise<void>> = {
  pull: async () => (await import('./pull.js')).benchPull(),
  assemble: async () => (await import('./assemble.js')).benchAssemble(),
  boot: async () => (await import('./boot.js')).benchBoot(),
  snapshot: async () => (await import('./snapshot.js')).benchSnapshot(),
  restore: async () => (await import('./restore.js')).benchRestore(),
  reconcile: async () => (await import('./reconcile.js')).benchReconcile(),
  api: async () => (await import('./api.js')).benchApi(),
};

const name = process.argv[2];
const scenario = name ? scenarios[name] : undefined;
if (!scenario) {
  process.stderr.write(`usage: npm run bench -- ${Object.keys(scenarios).join('|')}\n`);
  process.exit(2);
}
await scenario();
