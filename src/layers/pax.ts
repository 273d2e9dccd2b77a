import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/**
 * tar-stream decodes every PAX record value as UTF-8, which destroys binary
 * xattr values (file capabilities in `security.capability` are raw bytes).
 * There is no option for it, so cs replaces tar-stream's PAX decoder with one
 * that keeps `SCHILY.xattr.*` values as latin1 strings: one character per
 * byte, turned back into the exact bytes with Buffer.from(value, 'latin1').
 * Every other record is decoded as before. test/layers/semantics.test.ts
 * checks a binary capability survives, so a tar-stream upgrade that moves
 * this function fails loudly.
 */

export const XATTR_PAX_PREFIX = 'SCHILY.xattr.';

interface Headers {
  decodePax: (buf: Uint8Array) => Record<string, string>;
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

/** Install the decoder once; returns false when tar-stream's layout is not the expected one. */
export function installPaxDecoder(): boolean {
  try {
    const require = createRequire(import.meta.url);
    const headers = require(join(dirname(require.resolve('tar-stream')), 'headers.js')) as Headers;
    if (typeof headers.decodePax !== 'function') return false;
    if (!headers.csPatched) {
      headers.decodePax = decodePax;
      headers.csPatched = true;
    }
    return true;
  } catch {
    return false;
  }
}
