import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/**
 * tar-stream decodes and encodes every PAX record value as UTF-8, which
 * destroys binary xattr values (file capabilities in `security.capability`
 * are raw bytes). There is no option for it, so cs replaces tar-stream's PAX
 * decoder and encoder with ones that keep `SCHILY.xattr.*` values as latin1
 * strings: one character per byte, turned back into the exact bytes with
 * Buffer.from(value, 'latin1'). Every other record is handled as before.
 * test/layers/semantics.test.ts and src/layers/pack.test.ts check that a
 * binary capability survives both ways, so a tar-stream upgrade that moves
 * these functions fails loudly.
 */

export const XATTR_PAX_PREFIX = 'SCHILY.xattr.';

interface Headers {
  decodePax: (buf: Uint8Array) => Record<string, string>;
  encodePax: (opts: { name?: string; linkname?: string; pax?: Record<string, string> }) => Buffer;
  csPatched?: boolean;
}

function decodePax(buf: Uint8Array): Record<string, string> {
  const result: Record<string, string> = {};
  let rest = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  while (rest.length > 0) {
    let i = 0;
    while (i < rest.length && rest[i] !== 0x20) i++;
    const length = Number.parseInt(rest.subarray(0, i).toString('utf8'), 10);
    if (!length || length > rest.length || length <= i + 1) return result;
    const record = rest.subarray(i + 1, length - 1);
    const eq = record.indexOf(0x3d);
    if (eq === -1) return result;
    const key = record.subarray(0, eq).toString('utf8');
    const value = record.subarray(eq + 1);
    result[key] = key.startsWith(XATTR_PAX_PREFIX) ? value.toString('latin1') : value.toString('utf8');
    rest = rest.subarray(length);
  }
  return result;
}

/** One PAX record, `LEN key=value\n`, where LEN counts its own digits (POSIX pax, "extended header"). */
function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let length = body.length + String(body.length).length;
  if (String(length).length !== String(body.length).length) length = body.length + String(length).length;
  return Buffer.concat([Buffer.from(String(length), 'utf8'), body]);
}

function encodePax(opts: { name?: string; linkname?: string; pax?: Record<string, string> }): Buffer {
  const records: Buffer[] = [];
  if (opts.name) records.push(paxRecord('path', Buffer.from(opts.name, 'utf8')));
  if (opts.linkname) records.push(paxRecord('linkpath', Buffer.from(opts.linkname, 'utf8')));
  for (const [key, value] of Object.entries(opts.pax ?? {})) {
    records.push(paxRecord(key, Buffer.from(value, key.startsWith(XATTR_PAX_PREFIX) ? 'latin1' : 'utf8')));
  }
  return Buffer.concat(records);
}

/** Install the decoder and encoder once; returns false when tar-stream's layout is not the expected one. */
export function installPaxCodec(): boolean {
  try {
    const require = createRequire(import.meta.url);
    const headers = require(join(dirname(require.resolve('tar-stream')), 'headers.js')) as Headers;
    if (typeof headers.decodePax !== 'function' || typeof headers.encodePax !== 'function') return false;
    if (!headers.csPatched) {
      headers.decodePax = decodePax;
      headers.encodePax = encodePax;
      headers.csPatched = true;
    }
    return true;
  } catch {
    return false;
  }
}
