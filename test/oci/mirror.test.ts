import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pullImage, pushImage } from '../../src/oci/image.js';
import type { TestRegistry } from '../helpers/registry.js';
import { closedPort, makeHome, type TestHome } from './support/home.js';
import { importFiles } from './support/images.js';
import { startRegistries, stopRegistries } from './support/registries.js';

/**
 * Pull mirrors from the config file, with real registries: a mirror that has
 * the image serves it (even when the registry itself is down), and a mirror
 * that lacks it falls back to the registry. The image keeps its own name.
 */
describe('pull mirrors', () => {
  let registries: Record<'upstream' | 'mirror', TestRegistry> | undefined;
  let publisher: TestHome;
  let user: TestHome;

  beforeAll(async () => {
    registries = await startRegistries({ upstream: 'open', mirror: 'open' });
    publisher = await makeHome('mirror-pub');
    user = await makeHome('mirror-user');
  });
  afterAll(async () => {
    await stopRegistries(registries);
    await publisher?.cleanup();
    await user?.cleanup();
  });

  async function useConfig(text: string): Promise<void> {
    await writeFile(user.env['CS_CONFIG'] as string, text);
  }

  it('pulls from a mirror that has the image, under the image\'s own name, with the registry down', async () => {
    const { mirror } = registries!;
    const down = `127.0.0.1:${await closedPort()}`;
    const imported = await importFiles(publisher, `${mirror.host}/team/app:v1`, { 'hello.txt': 'from the mirror\n' });
    await pushImage({ source: `${mirror.host}/team/app:v1`, env: publisher.env });
    await useConfig(`registries:\n  - location: "${down}"\n    mirrors:\n      - location: "${mirror.host}"\n`);

    const result = await pullImage({ reference: `${down}/team/app:v1`, env: user.env });
    expect(result).toMatchObject({ reference: `${down}/team/app:v1`, registry: mirror.host, digest: imported.digest });
    expect((await (await user.store()).resolveTag(`${down}/team/app:v1`))?.digest).toBe(imported.digest);
  });

  it('falls back to the registry when the mirror lacks the image', async () => {
    const { upstream, mirror } = registries!;
    const imported = await importFiles(publisher, `${upstream.host}/team/only-upstream:v1`, { 'x.txt': 'upstream only\n' });
    await pushImage({ source: `${upstream.host}/team/only-upstream:v1`, env: publisher.env });
    await useConfig(`registries:\n  - location: "${upstream.host}"\n    mirrors:\n      - location: "${mirror.host}"\n`);

    const result = await pullImage({ reference: `${upstream.host}/team/only-upstream:v1`, env: user.env });
    expect(result).toMatchObject({ registry: upstream.host, digest: imported.digest });
  });

  it('reports the registry\'s own error when neither has the image', async () => {
    const { upstream, mirror } = registries!;
    await useConfig(`registries:\n  - location: "${upstream.host}"\n    mirrors:\n      - location: "${mirror.host}"\n`);
    const error = await pullImage({ reference: `${upstream.host}/team/nowhere:v1`, env: user.env }).then(
      () => undefined,
      (e: unknown) => e as Error & { exitCode?: number },
    );
    expect(error?.exitCode).toBe(4);
    expect(error?.message).toContain(upstream.host);
    expect(error?.message).toMatch(/not found/);
  });
});
