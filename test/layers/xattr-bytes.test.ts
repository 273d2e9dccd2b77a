import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { applyLayer } from '../../src/layers/apply.js';
import { MediaType } from '../../src/oci/media-types.js';
import { assemble } from '../../src/rootfs/assemble.js';
import { rawRecord, rawTar } from './support/tar.js';
import { makeHome, type TestHome } from '../rootfs/support/home.js';
import { tagImage } from '../rootfs/support/layers.js';

/**
 * xattr values are bytes, not text: a file capability (security.capability)
 * holds bytes >= 0x80 that a UTF-8 decoding destroys. tar-stream decodes PAX
 * values as UTF-8, so cs installs its own PAX decoder (src/layers/pax.ts);
 * this test fails if a tar-stream upgrade bypasses it.
 */

// A v2 file capability granting cap_net_raw (bit 13) and cap_setuid (bit 7), effective.
const CAPABILITY = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0x00, 0x00, 0x80, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);

/** One PAX record, `LEN key=value\n`, where LEN counts the whole record including itself. */
function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return Buffer.concat([Buffer.from(String(length)), body]);
}

function layerWithCapability(): Buffer {
  const pax = Buffer.concat([paxRecord('SCHILY.xattr.security.capability', CAPABILITY), paxRecord('SCHILY.xattr.user.note', Buffer.from('héllo'))]);
  return Buffer.concat([
    rawRecord({ name: 'bin/', typeflag: '5', mode: 0o755 }),
    rawRecord({ name: 'PaxHeaders/ping', typeflag: 'x' }, pax),
    rawRecord({ name: 'bin/ping', typeflag: '0', mode: 0o755 }, '#!/bin/sh\n'),
  ]);
}

async function collect(tar: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of tar) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

describe('binary xattr values', () => {
  it('reach onXattrs byte for byte (latin1 byte strings)', async () => {
    const root = mkdtempSync(join(tmpdir(), 'cs-xattr-'));
    try {
      const seen: Record<string, Record<string, string>> = {};
      await applyLayer({ root, tar: rawTar([layerWithCapability()]), privileged: true, onXattrs: (path, values) => void (seen[path] = values) });
      const values = seen['bin/ping'] ?? {};
      expect(Buffer.from(values['security.capability'] ?? '', 'latin1')).toEqual(CAPABILITY);
      expect(Buffer.from(values['user.note'] ?? '', 'latin1')).toEqual(Buffer.from('héllo'));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it.runIf(process.getuid?.() === 0)('land on disk unchanged when a root is assembled (as root)', async () => {
    const home: TestHome = await makeHome('xattr-bytes');
    try {
      const tar = await collect(rawTar([layerWithCapability()]));
      const descriptor = await home.store.putBytes(gzipSync(tar), MediaType.ociLayerGzip);
      const diffId = `sha256:${createHash('sha256').update(tar).digest('hex')}`;
      await tagImage(home.store, 'localhost/t/caps:v1', [{ descriptor, diffId }]);
      const out = home.out('root');
      await assemble({ snapshots: [{ reference: 'localhost/t/caps:v1', kind: 'base' }], out, format: 'dir', env: home.env });
      const hex = execFileSync('getfattr', ['--absolute-names', '-e', 'hex', '-n', 'security.capability', join(out, 'bin/ping')]).toString();
      expect(hex).toContain(`security.capability=0x${CAPABILITY.toString('hex')}`);
      const note = execFileSync('getfattr', ['--absolute-names', '-e', 'hex', '-n', 'user.note', join(out, 'bin/ping')]).toString();
      expect(note).toContain(`user.note=0x${Buffer.from('héllo').toString('hex')}`);
    } finally {
      await home.cleanup();
    }
  });
});
