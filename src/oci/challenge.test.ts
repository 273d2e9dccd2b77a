import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseChallenges } from './challenge.js';

describe('parseChallenges', () => {
  it('reads a Bearer challenge with quoted parameters, commas inside quotes included', () => {
    expect(parseChallenges('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull,push' } },
    ]);
  });

  it('reads a Basic challenge and unquoted values', () => {
    expect(parseChallenges('Basic realm=Registry')).toEqual([{ scheme: 'basic', params: { realm: 'Registry' } }]);
    expect(parseChallenges('Basic realm="Registry Realm"')).toEqual([{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
  });

  it('unescapes backslash-escaped characters in quoted values', () => {
    expect(parseChallenges('Bearer realm="a \\"quoted\\" realm",service="back\\\\slash"')).toEqual([
      { scheme: 'bearer', params: { realm: 'a "quoted" realm', service: 'back\\slash' } },
    ]);
  });

  it('reads several challenges in one header', () => {
    expect(parseChallenges('Basic realm="r1", Bearer realm="https://auth/token",service="s", Negotiate')).toEqual([
      { scheme: 'basic', params: { realm: 'r1' } },
      { scheme: 'bearer', params: { realm: 'https://auth/token', service: 's' } },
      { scheme: 'negotiate', params: {} },
    ]);
  });

  it('lowercases the scheme and parameter names, not values', () => {
    expect(parseChallenges('BEARER Realm="https://Auth/Token", SERVICE="Reg"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://Auth/Token', service: 'Reg' } },
    ]);
  });

  it('tolerates spaces around "=" and ","', () => {
    expect(parseChallenges('  Bearer   realm = "x" ,  service =y  ')).toEqual([{ scheme: 'bearer', params: { realm: 'x', service: 'y' } }]);
  });

  // RFC 9110 §5.6.1: a recipient must accept empty list elements.
  it('accepts empty list elements between parameters and between challenges', () => {
    expect(parseChallenges('Bearer realm="x", , service="y",, Basic realm="z"')).toEqual([
      { scheme: 'bearer', params: { realm: 'x', service: 'y' } },
      { scheme: 'basic', params: { realm: 'z' } },
    ]);
  });

  it('returns nothing for an absent or empty header', () => {
    expect(parseChallenges(undefined)).toEqual([]);
    expect(parseChallenges(null)).toEqual([]);
    expect(parseChallenges('')).toEqual([]);
    expect(parseChallenges('   ')).toEqual([]);
  });

  it('survives an unterminated quoted value', () => {
    expect(parseChallenges('Bearer realm="https://auth')).toEqual([{ scheme: 'bearer', params: { realm: 'https://auth' } }]);
  });

  it('never throws on garbage, and every result is well formed', () => {
    const alphabet = fc.constantFrom(...'Bearer Basic realm=service,"\\ \t=,;:/abcXYZ019!#$%&\'*+.^_`|~-()<>@[]{}?\u00e9\u0000');
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 200 }), fc.string({ unit: alphabet, maxLength: 200 })), (header) => {
        const challenges = parseChallenges(header);
        for (const c of challenges) {
          expect(c.scheme).toMatch(/^[!#$%&'*+.^_`|~0-9a-z-]+$/);
          for (const [name, value] of Object.entries(c.params)) {
            expect(name).toMatch(/^[!#$%&'*+.^_`|~0-9a-z-]+$/);
            expect(typeof value).toBe('string');
          }
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('reads only the first 8 KiB of a huge header, quickly', () => {
    const huge = `Bearer realm="${'a'.repeat(1_000_000)}"`;
    const started = Date.now();
    const [c] = parseChallenges(huge);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(c?.scheme).toBe('bearer');
    expect(c?.params['realm']?.length).toBeLessThanOrEqual(8192);
  });
});
