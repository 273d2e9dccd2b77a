/**
 * Sizes and durations as people write them in definitions. A bare number is
 * MiB; `K/M/G/T` are powers of 1000 and `Ki/Mi/Gi/Ti` powers of 1024, with
 * an optional trailing `B`.
 */

const POWERS: Record<string, number> = { '': 0, K: 1, M: 2, G: 3, T: 4 };
const SIZE = /^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)B?$/;
const MIB = 1024 * 1024;

/** Bytes, or undefined when `value` is not a size. */
export function parseSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value * MIB : undefined;
  const match = SIZE.exec(value.trim());
  if (!match) return undefined;
  const [, digits = '', unit = '', binary = ''] = match;
  const amount = Number(digits);
  if (unit === '' && binary === '') {
    // "512" alone is MiB; "512B" is bytes.
    return value.trim().endsWith('B') ? Math.round(amount) : Math.round(amount * MIB);
  }
  if (unit === '' && binary === 'i') return undefined;
  const bytes = amount * (binary ? 1024 : 1000) ** (POWERS[unit] ?? 0);
  return Number.isSafeInteger(Math.round(bytes)) ? Math.round(bytes) : undefined;
}

const DURATION = /^([0-9]+)(ms|s|m|h)$/;
const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

export function parseDuration(value: string): number | undefined {
  const match = DURATION.exec(value);
  if (!match) return undefined;
  return Number(match[1]) * (DURATION_MS[match[2] ?? 's'] ?? 1000);
}
