import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  DEFAULT_REGISTRY,
  OCI_PREFIX,
  formatReference,
  isLoopbackRegistry,
  isOciReference,
  parseReference,
  type ParseResult,
  type Reference,
} from './reference.js';

const HEX64 = '0123456789abcdef'.repeat(4);
const HEX128 = HEX64 + HEX64;
const SHA256 = `sha256:${HEX64}`;
const SHA512 = `sha512:${HEX128}`;

function parsed(input: string, options?: { defaultTag?: boolean }): Reference {
  const r = parseReference(input, options);
  if (!r.ok) throw new Error(`expected ${JSON.stringify(input)} to parse, got: ${r.problem.message}`);
  return r.reference;
}

/** Structural sanity of any result for the given input. */
function expectWellFormed(input: string, r: ParseResult): void {
  if (r.ok) return;
  const { offset, length, message } = r.problem;
  expect(Number.isInteger(offset) && Number.isInteger(length)).toBe(true);
  expect(offset).toBeGreaterThanOrEqual(0);
  expect(length).toBeGreaterThanOrEqual(0);
  expect(offset + length).toBeLessThanOrEqual(input.length);
  expect(message.length).toBeGreaterThan(0);
  expect(message.endsWith('.')).toBe(false);
  expect(message.charAt(0)).toBe(message.charAt(0).toLowerCase());
}

describe('parseReference: valid references', () => {
  const long255 = `example.com/${'a'.repeat(243)}`;
  const cases: Array<[string, Reference]> = [
    ['debian', { registry: 'docker.io', repository: 'library/debian' }],
    ['debian:12', { registry: 'docker.io', repository: 'library/debian', tag: '12' }],
    ['team/base', { registry: 'docker.io', repository: 'team/base' }],
    ['team/base:v1.0', { registry: 'docker.io', repository: 'team/base', tag: 'v1.0' }],
    ['library/debian', { registry: 'docker.io', repository: 'library/debian' }],
    ['docker.io/debian', { registry: 'docker.io', repository: 'library/debian' }],
    ['docker.io/library/debian:bookworm', { registry: 'docker.io', repository: 'library/debian', tag: 'bookworm' }],
    ['index.docker.io/debian', { registry: 'docker.io', repository: 'library/debian' }],
    ['index.docker.io/team/base:v1', { registry: 'docker.io', repository: 'team/base', tag: 'v1' }],
    ['localhost/x', { registry: 'localhost', repository: 'x' }],
    ['localhost:5000/x', { registry: 'localhost:5000', repository: 'x' }],
    // docker quirk: without a "/", "localhost:5000" is the image "localhost" with tag "5000"
    ['localhost:5000', { registry: 'docker.io', repository: 'library/localhost', tag: '5000' }],
    ['localhost', { registry: 'docker.io', repository: 'library/localhost' }],
    ['127.0.0.1:5000/a/b:tag', { registry: '127.0.0.1:5000', repository: 'a/b', tag: 'tag' }],
    [`[::1]:5000/x@${SHA256}`, { registry: '[::1]:5000', repository: 'x', digest: SHA256 }],
    ['[2001:db8::1]/team/x', { registry: '[2001:db8::1]', repository: 'team/x' }],
    [
      `ghcr.io/org/app:v1.2.3@${SHA256}`,
      { registry: 'ghcr.io', repository: 'org/app', tag: 'v1.2.3', digest: SHA256 },
    ],
    [`debian@${SHA256}`, { registry: 'docker.io', repository: 'library/debian', digest: SHA256 }],
    [`x@${SHA512}`, { registry: 'docker.io', repository: 'library/x', digest: SHA512 }],
    [`x@sha384:${HEX64}${'f'.repeat(32)}`, { registry: 'docker.io', repository: 'library/x', digest: `sha384:${HEX64}${'f'.repeat(32)}` }],
    [`x@blake3:${HEX64}`, { registry: 'docker.io', repository: 'library/x', digest: `blake3:${HEX64}` }],
    ['oci://ghcr.io/org/app:1', { registry: 'ghcr.io', repository: 'org/app', tag: '1' }],
    ['oci://debian', { registry: 'docker.io', repository: 'library/debian' }],
    ['oci://localhost:5000/team/base:dev', { registry: 'localhost:5000', repository: 'team/base', tag: 'dev' }],
    ['Registry.Example.COM/a', { registry: 'Registry.Example.COM', repository: 'a' }],
    ['my-registry.example.com:65535/a', { registry: 'my-registry.example.com:65535', repository: 'a' }],
    ['a/b-c/d__e/f.g/h---i/j_k', { registry: 'docker.io', repository: 'a/b-c/d__e/f.g/h---i/j_k' }],
    ['x:_under', { registry: 'docker.io', repository: 'library/x', tag: '_under' }],
    ['x:A.b-C_9', { registry: 'docker.io', repository: 'library/x', tag: 'A.b-C_9' }],
    [`x:${'a'.repeat(128)}`, { registry: 'docker.io', repository: 'library/x', tag: 'a'.repeat(128) }],
    [long255, { registry: 'example.com', repository: 'a'.repeat(243) }],
  ];

  it.each(cases)('%s', (input, expected) => {
    const ref = parsed(input);
    expect(ref).toStrictEqual(expected);
    // Optional fields are absent, not undefined.
    if (expected.tag === undefined) expect('tag' in ref).toBe(false);
    if (expected.digest === undefined) expect('digest' in ref).toBe(false);
  });

  it('defaults the tag to latest only when asked and nothing else pins the image', () => {
    expect(parsed('debian', { defaultTag: true })).toStrictEqual({
      registry: 'docker.io',
      repository: 'library/debian',
      tag: 'latest',
    });
    expect(parsed('debian:12', { defaultTag: true }).tag).toBe('12');
    expect(parsed(`debian@${SHA256}`, { defaultTag: true })).toStrictEqual({
      registry: 'docker.io',
      repository: 'library/debian',
      digest: SHA256,
    });
    expect('tag' in parsed('debian')).toBe(false);
    expect('tag' in parsed('debian', { defaultTag: false })).toBe(false);
  });
});

describe('parseReference: invalid references', () => {
  // [input, expected offset, substring of the message]
  const cases: Array<[string, number, string]> = [
    ['', 0, 'empty reference'],
    ['oci://', 6, 'empty reference'],
    ['a//b', 2, 'empty path component'],
    ['localhost:5000/a//b', 17, 'empty path component'],
    ['a/', 1, 'must not end with "/"'],
    ['/a', 0, 'must not start with "/"'],
    ['localhost:5000/', 15, 'missing repository after registry "localhost:5000"'],
    ['[::1]:5000', 0, 'missing repository after registry'],
    [':tag', 0, 'missing repository name'],
    [`@${SHA256}`, 0, 'missing repository name'],
    ['Debian', 0, 'must be lowercase'],
    ['team/Base', 5, 'must be lowercase'],
    ['oci://team/Base', 11, 'must be lowercase'],
    ['ghcr.io/org/myApp:1', 14, 'must be lowercase'],
    ['a/b$c', 3, 'invalid character "$" in path component "b$c"'],
    ['a/b:c/d', 3, 'invalid character ":"'],
    ['d\u00e9bian', 1, 'invalid character "\u00e9"'],
    ['a/-b', 2, 'must start with a lowercase letter or digit'],
    ['a/b-', 3, 'must end with a lowercase letter or digit'],
    ['a/b..c', 3, 'invalid separator ".."'],
    ['a/b___c', 3, 'invalid separator "___"'],
    ['a/b._c', 3, 'invalid separator "._"'],
    ['x:Foo!', 5, 'invalid tag "Foo!": a tag is 1 to 128 characters of letters, digits, "_", ".", "-", not starting with "." or "-"'],
    ['x:.foo', 2, 'invalid tag ".foo"'],
    ['x:-foo', 2, 'invalid tag "-foo"'],
    ['x:', 1, 'invalid tag ""'],
    ['x:a:b', 3, 'invalid tag "a:b"'],
    [`x:${'a'.repeat(129)}`, 130, 'a tag is 1 to 128 characters'],
    ['x@', 1, 'empty digest'],
    ['x@sha256', 2, 'expected "<algorithm>:<hex>"'],
    ['x@:abc', 2, 'missing algorithm'],
    ['x@SHA256:abc', 2, 'invalid digest algorithm "SHA256"'],
    [`x@sha256-:${HEX64}`, 2, 'invalid digest algorithm "sha256-"'],
    [`x@sha..256:${HEX64}`, 2, 'invalid digest algorithm'],
    ['x@sha256:abc', 9, 'a sha256 digest is exactly 64 lowercase hex digits, got 3'],
    [`x@sha256:${HEX64.slice(0, 63)}A`, 72, 'a sha256 digest is exactly 64 lowercase hex digits, found "A"'],
    [`x@sha256:${HEX64.toUpperCase()}`, 19, '64 lowercase hex digits'],
    [`x@sha256:${HEX64}0`, 9, 'got 65'],
    [`x@sha512:${HEX64}`, 9, 'a sha512 digest is exactly 128 lowercase hex digits'],
    [`x@${SHA256}:latest`, 73, 'a tag must come before the "@" digest'],
    [`x@${SHA256}junk`, 73, 'unexpected characters "junk" after digest'],
    [`x@${SHA256}@${SHA256}`, 73, 'unexpected characters'],
    ['x@foo:1234', 6, 'at least 32 lowercase hex digits'],
    ['localhost:0/x', 10, 'port must be a number from 1 to 65535'],
    ['localhost:65536/x', 10, 'from 1 to 65535'],
    ['localhost:abc/x', 10, 'invalid port "abc"'],
    ['localhost:/x', 10, 'invalid port ""'],
    ['oci://localhost:99999/x', 16, 'invalid port "99999"'],
    [':5000/x', 0, 'missing registry host'],
    ['exa_mple.com/x', 3, 'invalid character "_" in registry host'],
    ['-bad.com/x', 0, 'must not start or end with "-"'],
    ['a..b.com/x', 2, 'empty label in registry host'],
    ['[::1/x', 0, 'unterminated IPv6 address'],
    ['[]/x', 0, 'empty IPv6 address'],
    ['[::g]/x', 3, 'invalid character "g" in IPv6 address'],
    ['[::1]x/y', 5, 'unexpected "x" after IPv6 address'],
    [' debian', 0, 'must not start with whitespace'],
    ['debian ', 6, 'must not end with whitespace'],
    ['debian\n', 6, 'must not end with whitespace'],
    ['deb ian', 3, 'must not contain whitespace'],
    ['oci:// debian', 6, 'whitespace'],
    ['docker://debian', 0, 'unsupported scheme "docker://"'],
    ['oci://oci://debian', 6, 'duplicate "oci://" prefix'],
    [HEX64, 0, 'image id'],
    [`${'a'.repeat(238)}`, 0, 'repository name is too long'],
    [`example.com/${'a'.repeat(244)}`, 0, 'at most 255'],
    ['a'.repeat(5000), 0, 'reference is too long'],
  ];

  it.each(cases)('%j', (input, offset, fragment) => {
    const r = parseReference(input);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.problem.message).toContain(fragment);
    expect(r.problem.offset).toBe(offset);
    expectWellFormed(input, r);
  });

  it('points offset and length at the offending part', () => {
    const tag = parseReference('oci://x:Foo!');
    expect(tag.ok ? null : tag.problem).toMatchObject({ offset: 11, length: 1 });
    const port = parseReference('localhost:abc/x');
    expect(port.ok ? null : port.problem).toMatchObject({ offset: 10, length: 3 });
    const alg = parseReference('x@SHA256:abc');
    expect(alg.ok ? null : alg.problem).toMatchObject({ offset: 2, length: 6 });
    const hex = parseReference('x@sha256:abc');
    expect(hex.ok ? null : hex.problem).toMatchObject({ offset: 9, length: 3 });
    const ws = parseReference('debian  ');
    expect(ws.ok ? null : ws.problem).toMatchObject({ offset: 6, length: 2 });
    const sep = parseReference('a/b---.c');
    expect(sep.ok ? null : sep.problem).toMatchObject({ offset: 3, length: 4 });
  });

  it('returns a problem instead of throwing for non-string input from untyped callers', () => {
    const r = parseReference(42 as unknown as string);
    expect(r.ok).toBe(false);
  });
});

describe('formatReference / isOciReference / constants', () => {
  it('formats canonically', () => {
    expect(formatReference({ registry: 'docker.io', repository: 'library/debian' })).toBe('docker.io/library/debian');
    expect(formatReference({ registry: 'localhost:5000', repository: 'x', tag: 't' })).toBe('localhost:5000/x:t');
    expect(formatReference({ registry: '[::1]:5000', repository: 'x', tag: 't', digest: SHA256 })).toBe(
      `[::1]:5000/x:t@${SHA256}`,
    );
    expect(formatReference(parsed('oci://debian:12'))).toBe('docker.io/library/debian:12');
    expect(formatReference(parsed('index.docker.io/debian'))).toBe('docker.io/library/debian');
  });

  it('recognises the oci:// prefix', () => {
    expect(OCI_PREFIX).toBe('oci://');
    expect(DEFAULT_REGISTRY).toBe('docker.io');
    expect(isOciReference('oci://debian')).toBe(true);
    expect(isOciReference('debian')).toBe(false);
    expect(isOciReference('OCI://debian')).toBe(false);
    expect(isOciReference('docker://debian')).toBe(false);
  });
});

describe('isLoopbackRegistry', () => {
  it.each([
    'localhost',
    'localhost:5000',
    'LocalHost:1',
    '127.0.0.1',
    '127.0.0.1:5000',
    '127.255.3.9:65535',
    '[::1]',
    '[::1]:5000',
    '[0:0:0:0:0:0:0:1]:80',
    '[0000::0001]',
  ])('%s is loopback', (registry) => {
    expect(isLoopbackRegistry(registry)).toBe(true);
  });

  it.each([
    '',
    'docker.io',
    'localhost.example.com',
    'mylocalhost',
    '128.0.0.1',
    '127.0.0.256',
    '127.0.0',
    '127.0.0.1.5',
    '[::2]',
    '[::1',
    '::1',
    '[::1]5000',
    'localhost:0',
    'localhost:65536',
    'localhost:',
    'localhost:abc',
    '10.0.0.1:5000',
  ])('%j is not loopback', (registry) => {
    expect(isLoopbackRegistry(registry)).toBe(false);
  });

  it('agrees with parsed registries', () => {
    expect(isLoopbackRegistry(parsed('localhost:5000/x').registry)).toBe(true);
    expect(isLoopbackRegistry(parsed(`[::1]:5000/x@${SHA256}`).registry)).toBe(true);
    expect(isLoopbackRegistry(parsed('localhost:5000').registry)).toBe(false); // docker.io, tag 5000
  });
});

describe('hostile input', () => {
  it('stays fast on pathological strings', () => {
    const inputs = [
      `a${'-'.repeat(4000)}!`,
      `a${'-a'.repeat(2000)}!`,
      `${'a/'.repeat(2000)}!`,
      `${'a.'.repeat(2000)}/x`,
      `x:${'a'.repeat(4000)}`,
      `x@${'a+'.repeat(2000)}`,
      `${'['.repeat(4000)}`,
      `${'a'.repeat(100_000)}`,
    ];
    const start = performance.now();
    for (const input of inputs) {
      const r = parseReference(input);
      expect(r.ok).toBe(false);
      expectWellFormed(input, r);
    }
    expect(performance.now() - start).toBeLessThan(1000);
  });
});

// ---------------------------------------------------------------------------
// Property tests.

const lowerAlnum = [...'abcdefghijklmnopqrstuvwxyz0123456789'];
const hexChars = [...'0123456789abcdef'];
const wordChars = [...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_'];

const alnumRun = fc.string({ unit: fc.constantFrom(...lowerAlnum), minLength: 1, maxLength: 6 });
const componentWith = (seps: string[]) =>
  fc
    .tuple(alnumRun, fc.array(fc.tuple(fc.constantFrom(...seps), alnumRun), { maxLength: 3 }))
    .map(([head, rest]) => head + rest.map(([s, r]) => s + r).join(''));
const pathComponent = componentWith(['.', '_', '__', '-', '--', '---']);
// Without an explicit registry, a first component containing "." would be read as a registry.
const firstComponentNoRegistry = componentWith(['_', '__', '-', '--']);

const label = fc
  .tuple(
    fc.constantFrom(...'abcXYZ019'),
    fc.string({ unit: fc.constantFrom(...'abcXYZ019-'), maxLength: 6 }),
    fc.constantFrom(...'abcXYZ019'),
  )
  .map(([a, mid, b]) => (mid.length === 0 ? a : a + mid + b));
const port = fc.integer({ min: 1, max: 65535 }).map(String);
const registryArb = fc.oneof(
  fc
    .tuple(fc.array(label, { minLength: 2, maxLength: 3 }), fc.option(port, { nil: undefined }))
    .map(([labels, p]) => labels.join('.') + (p === undefined ? '' : `:${p}`)),
  fc.tuple(label, port).map(([l, p]) => `${l}:${p}`),
  fc.constantFrom('localhost', 'localhost:5000', '127.0.0.1:5000', '[::1]:5000', '[2001:db8::1]', 'index.docker.io', 'docker.io'),
);
const tagArb = fc
  .tuple(fc.constantFrom(...wordChars), fc.string({ unit: fc.constantFrom(...wordChars, '.', '-'), maxLength: 127 }))
  .map(([a, b]) => a + b);
const digestArb = fc.oneof(
  fc.string({ unit: fc.constantFrom(...hexChars), minLength: 64, maxLength: 64 }).map((h) => `sha256:${h}`),
  fc.string({ unit: fc.constantFrom(...hexChars), minLength: 128, maxLength: 128 }).map((h) => `sha512:${h}`),
);

interface Generated {
  text: string;
  tag: string | undefined;
  digest: string | undefined;
  path: string;
}

const validReference: fc.Arbitrary<Generated> = fc
  .record({
    prefix: fc.boolean(),
    registry: fc.option(registryArb, { nil: undefined }),
    first: pathComponent,
    firstNoRegistry: firstComponentNoRegistry,
    rest: fc.array(pathComponent, { maxLength: 3 }),
    tag: fc.option(tagArb, { nil: undefined }),
    digest: fc.option(digestArb, { nil: undefined }),
  })
  .map(({ prefix, registry, first, firstNoRegistry, rest, tag, digest }) => {
    const path = [registry === undefined ? firstNoRegistry : first, ...rest].join('/');
    const text =
      (prefix ? OCI_PREFIX : '') +
      (registry === undefined ? '' : `${registry}/`) +
      path +
      (tag === undefined ? '' : `:${tag}`) +
      (digest === undefined ? '' : `@${digest}`);
    return { text, tag, digest, path };
  });

const mutation = fc.oneof(
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), ch: fc.string({ unit: 'binary', minLength: 1, maxLength: 3 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ kind: fc.constant('replace' as const), at: fc.nat(), ch: fc.constantFrom(...'/:@.-_ A[]%\u00e9\0') }),
  fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 80 }) }),
);

type MutationValue = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(text: string, ms: readonly MutationValue[]): string {
  let out = text;
  for (const m of ms) {
    const at = out.length === 0 ? 0 : m.at % (out.length + 1);
    switch (m.kind) {
      case 'insert':
        out = out.slice(0, at) + m.ch + out.slice(at);
        break;
      case 'delete':
        out = out.slice(0, at) + out.slice(at + m.n);
        break;
      case 'replace':
        out = out.slice(0, at) + m.ch + out.slice(at + 1);
        break;
      case 'duplicate':
        out = out.slice(0, at + m.n) + out.slice(at);
        break;
    }
  }
  return out;
}

/** Anything that parses must survive format -> parse unchanged. */
function expectRoundTrip(r: ParseResult): void {
  if (!r.ok) return;
  expect(parseReference(formatReference(r.reference))).toStrictEqual(r);
}

describe('properties', () => {
  it('never throws on arbitrary strings and reports in-range problems', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 300 }),
          fc.string({ unit: 'binary', maxLength: 300 }),
          fc.string({ unit: fc.constantFrom(...'aZ09:/@._-[]'), maxLength: 80 }),
          fc.string({ unit: fc.constantFrom(...'aZ09:/@._-[]'), maxLength: 80 }).map((s) => OCI_PREFIX + s),
        ),
        fc.boolean(),
        (input, defaultTag) => {
          const r = parseReference(input, { defaultTag });
          expectWellFormed(input, r);
          expectRoundTrip(parseReference(input));
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('parses every generated valid reference, and format/parse round-trips', () => {
    fc.assert(
      fc.property(validReference, ({ text, tag, digest, path }) => {
        const r = parseReference(text);
        if (!r.ok) throw new Error(`${JSON.stringify(text)}: ${r.problem.message}`);
        const ref = r.reference;
        expect(ref.tag).toBe(tag);
        expect(ref.digest).toBe(digest);
        expect(ref.repository.endsWith(path)).toBe(true);
        expect(formatReference(ref).startsWith(`${ref.registry}/${ref.repository}`)).toBe(true);
        expect(parseReference(formatReference(ref))).toStrictEqual(r);
        // Canonical output is a fixed point.
        expect(formatReference(parsed(formatReference(ref)))).toBe(formatReference(ref));
      }),
      { numRuns: 1000 },
    );
  });

  it('never throws on mutated valid references', () => {
    fc.assert(
      fc.property(validReference, fc.array(mutation, { minLength: 1, maxLength: 4 }), (gen, ms) => {
        const input = mutate(gen.text, ms);
        const r = parseReference(input);
        expectWellFormed(input, r);
        expectRoundTrip(r);
      }),
      { numRuns: 2000 },
    );
  });
});
