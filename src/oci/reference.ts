/**
 * Container image references (`registry/repository[:tag][@digest]`).
 *
 * This module implements the image reference grammar of the distribution
 * "reference" package (the one docker, containerd and the OCI registries
 * agree on), together with docker's name normalisation (`debian` means
 * `docker.io/library/debian`). cs speaks to registries through its own
 * client and there is no maintained TypeScript library for this grammar to
 * rely on, so the parser lives here. It is a hand-written scanner rather than
 * one large regular expression so that every error can name and point at the
 * offending part of the input, and so that hostile input cannot trigger
 * catastrophic backtracking.
 *
 * Spec pointer: https://github.com/distribution/reference/blob/main/reference.go
 *
 * Summary of the accepted grammar:
 *
 *   reference   = name [ ":" tag ] [ "@" digest ]
 *   name        = [ registry "/" ] path                (at most 255 characters, normalised)
 *   registry    = host [ ":" port ]                     (port 1..65535)
 *   host        = label *( "." label ) | "[" ipv6 "]"   (label: letters/digits, inner "-")
 *   path        = component *( "/" component )
 *   component   = [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
 *   tag         = [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
 *   digest      = algorithm ":" hex
 *   algorithm   = [a-z0-9]+ ( [.+_-] [a-z0-9]+ )*
 *   hex         = 64 (sha256), 96 (sha384), 128 (sha512) lowercase hex digits;
 *                 at least 32 lowercase hex digits for other algorithms
 *
 * The first path segment is a registry only if it contains "." or ":", starts
 * with "[", or is exactly "localhost"; otherwise the registry is docker.io.
 */

export interface Reference {
  /** Registry host with optional port, e.g. 'docker.io', 'localhost:5000', '[::1]:5000'. */
  registry: string;
  /** Repository path inside the registry, e.g. 'library/debian'. */
  repository: string;
  /** Present only when given in the input, or defaulted with `defaultTag`. */
  tag?: string;
  /** Content digest, e.g. 'sha256:<64 hex>'. */
  digest?: string;
}

/** A parse failure; offset/length index into the original input (including any 'oci://' prefix). */
export interface ReferenceProblem {
  offset: number;
  length: number;
  message: string;
}

export type ParseResult = { ok: true; reference: Reference } | { ok: false; problem: ReferenceProblem };

export interface ParseOptions {
  /** When neither tag nor digest is given, use the tag 'latest'. Default false. */
  defaultTag?: boolean | undefined;
}

export const OCI_PREFIX = 'oci://';
export const DEFAULT_REGISTRY = 'docker.io';

const LEGACY_DEFAULT_REGISTRY = 'index.docker.io';
const OFFICIAL_NAMESPACE = 'library';
const DEFAULT_TAG = 'latest';
/** Inputs longer than this are rejected before any scanning. */
const MAX_INPUT_LENGTH = 4096;
/** Maximum length of the normalised `registry/repository` name. */
const MAX_NAME_LENGTH = 255;
const MAX_TAG_LENGTH = 128;
const MIN_UNKNOWN_DIGEST_HEX = 32;
const KNOWN_DIGEST_HEX_LENGTHS: ReadonlyMap<string, number> = new Map([
  ['sha256', 64],
  ['sha384', 96],
  ['sha512', 128],
]);

const TAG_RULE = 'a tag is 1 to 128 characters of letters, digits, "_", ".", "-", not starting with "." or "-"';
const PATH_RULE =
  'path components are lowercase letters and digits, joined by a single ".", one or two "_", or one or more "-"';
const HOST_RULE =
  'registry host labels are letters, digits and "-", separated by ".", not starting or ending with "-"';
const ALGORITHM_RULE =
  'an algorithm is lowercase letters and digits, optionally joined by single ".", "+", "_" or "-"';
const DIGEST_SHAPE = 'expected "<algorithm>:<hex>", e.g. "sha256:" followed by 64 lowercase hex digits';

type Problem = ReferenceProblem | null;

// ---------------------------------------------------------------------------
// Character classes (plain comparisons, no regular expressions over input).

function isDigit(c: string): boolean {
  return c >= '0' && c <= '9';
}
function isLower(c: string): boolean {
  return c >= 'a' && c <= 'z';
}
function isUpper(c: string): boolean {
  return c >= 'A' && c <= 'Z';
}
function isLowerAlnum(c: string): boolean {
  return isLower(c) || isDigit(c);
}
function isAlnum(c: string): boolean {
  return isLower(c) || isUpper(c) || isDigit(c);
}
function isWordChar(c: string): boolean {
  return isAlnum(c) || c === '_';
}
function isLowerHex(c: string): boolean {
  return isDigit(c) || (c >= 'a' && c <= 'f');
}
function isHexOrColon(c: string): boolean {
  return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c === ':';
}
function isPathSeparatorChar(c: string): boolean {
  return c === '.' || c === '_' || c === '-';
}
function isWhitespace(c: string): boolean {
  return /\s/.test(c);
}

/** The character (whole code point) at `i`, and its length in UTF-16 units. */
function charAt(s: string, i: number): { ch: string; len: number } {
  const cp = s.codePointAt(i);
  if (cp === undefined) return { ch: '', len: 0 };
  const len = cp > 0xffff ? 2 : 1;
  return { ch: s.slice(i, i + len), len };
}

/** Quote a piece of input for a message; long pieces are shortened. */
function quote(s: string): string {
  const max = 72;
  return JSON.stringify(s.length > max ? `${s.slice(0, max - 3)}...` : s);
}

function problem(offset: number, length: number, message: string): ReferenceProblem {
  return { offset, length, message };
}

// ---------------------------------------------------------------------------
// Component checks. Each returns a problem with offsets relative to the start
// of the string after any 'oci://' prefix, or null when the part is valid.

function checkPort(port: string, off: number, registry: string): Problem {
  let valid = port.length > 0 && port.length <= 5;
  for (let i = 0; valid && i < port.length; i++) {
    if (!isDigit(port.charAt(i))) valid = false;
  }
  if (valid) {
    const n = Number(port);
    valid = n >= 1 && n <= 65535;
  }
  if (valid) return null;
  return problem(
    off,
    port.length,
    `invalid port ${quote(port)} in registry ${quote(registry)}: the port must be a number from 1 to 65535`,
  );
}

function checkHostLabels(host: string, off: number): Problem {
  if (host.length === 0) {
    return problem(off, 0, 'missing registry host before ":"');
  }
  let start = 0;
  for (;;) {
    const dot = host.indexOf('.', start);
    const end = dot < 0 ? host.length : dot;
    const label = host.slice(start, end);
    if (label.length === 0) {
      // Point at the dot that ends (or, for a trailing dot, precedes) the empty label.
      const at = end < host.length ? end : end - 1;
      return problem(off + at, 1, `empty label in registry host ${quote(host)}: ${HOST_RULE}`);
    }
    for (let i = 0; i < label.length; ) {
      const { ch, len } = charAt(label, i);
      if (!isAlnum(ch) && ch !== '-') {
        return problem(
          off + start + i,
          len,
          `invalid character ${quote(ch)} in registry host ${quote(host)}: ${HOST_RULE}`,
        );
      }
      i += len;
    }
    if (label.startsWith('-') || label.endsWith('-')) {
      return problem(
        off + start,
        label.length,
        `registry host label ${quote(label)} must not start or end with "-"`,
      );
    }
    if (dot < 0) return null;
    start = dot + 1;
  }
}

function checkRegistry(registry: string, off: number): Problem {
  let hostEnd: number;
  if (registry.startsWith('[')) {
    const close = registry.indexOf(']');
    if (close < 0) {
      return problem(off, registry.length, `unterminated IPv6 address in registry ${quote(registry)}: missing "]"`);
    }
    const inner = registry.slice(1, close);
    if (inner.length === 0) {
      return problem(off, close + 1, 'empty IPv6 address in registry "[]"');
    }
    for (let i = 0; i < inner.length; ) {
      const { ch, len } = charAt(inner, i);
      if (!isHexOrColon(ch)) {
        return problem(
          off + 1 + i,
          len,
          `invalid character ${quote(ch)} in IPv6 address ${quote(inner)}: only hex digits and ":" are allowed`,
        );
      }
      i += len;
    }
    hostEnd = close + 1;
  } else {
    const colon = registry.indexOf(':');
    hostEnd = colon < 0 ? registry.length : colon;
    const hostProblem = checkHostLabels(registry.slice(0, hostEnd), off);
    if (hostProblem) return hostProblem;
  }
  if (hostEnd === registry.length) return null;
  if (registry.charAt(hostEnd) !== ':') {
    const { ch, len } = charAt(registry, hostEnd);
    return problem(
      off + hostEnd,
      len,
      `unexpected ${quote(ch)} after IPv6 address in registry ${quote(registry)}: expected ":" and a port, or "/"`,
    );
  }
  return checkPort(registry.slice(hostEnd + 1), off + hostEnd + 1, registry);
}

function isValidPathSeparator(run: string): boolean {
  if (run === '.' || run === '_' || run === '__') return true;
  for (let i = 0; i < run.length; i++) {
    if (run.charAt(i) !== '-') return false;
  }
  return run.length > 0;
}

function checkPathComponent(comp: string, off: number): Problem {
  for (let i = 0; i < comp.length; ) {
    const { ch, len } = charAt(comp, i);
    if (isLowerAlnum(ch)) {
      i += len;
      continue;
    }
    if (isUpper(ch)) {
      return problem(
        off + i,
        1,
        `repository name must be lowercase: found ${quote(ch)} in path component ${quote(comp)}`,
      );
    }
    if (isPathSeparatorChar(ch)) {
      let j = i;
      while (j < comp.length && isPathSeparatorChar(comp.charAt(j))) j++;
      const run = comp.slice(i, j);
      if (i === 0) {
        return problem(
          off,
          run.length,
          `path component ${quote(comp)} must start with a lowercase letter or digit`,
        );
      }
      if (j === comp.length) {
        return problem(
          off + i,
          run.length,
          `path component ${quote(comp)} must end with a lowercase letter or digit`,
        );
      }
      if (!isValidPathSeparator(run)) {
        return problem(off + i, run.length, `invalid separator ${quote(run)} in path component ${quote(comp)}: ${PATH_RULE}`);
      }
      i = j;
      continue;
    }
    return problem(off + i, len, `invalid character ${quote(ch)} in path component ${quote(comp)}: ${PATH_RULE}`);
  }
  return null;
}

/** `off` is where `path` starts; `atNameStart` tells whether that is the start of the whole name. */
function checkPath(path: string, off: number, atNameStart: boolean): Problem {
  let start = 0;
  for (;;) {
    const slash = path.indexOf('/', start);
    const end = slash < 0 ? path.length : slash;
    if (end === start) {
      if (start === 0 && atNameStart) {
        return problem(off, 1, 'reference must not start with "/"');
      }
      if (end === path.length) {
        return problem(off + start - 1, 1, `repository ${quote(path)} must not end with "/"`);
      }
      return problem(
        off + start,
        1,
        `empty path component in repository ${quote(path)}: components must be separated by a single "/"`,
      );
    }
    const p = checkPathComponent(path.slice(start, end), off + start);
    if (p) return p;
    if (slash < 0) return null;
    start = slash + 1;
  }
}

function checkTag(tag: string, off: number): Problem {
  if (tag.length === 0) {
    return problem(off - 1, 1, `invalid tag "": ${TAG_RULE}`);
  }
  const first = tag.charAt(0);
  if (!isWordChar(first)) {
    return problem(off, charAt(tag, 0).len, `invalid tag ${quote(tag)}: ${TAG_RULE}`);
  }
  for (let i = 1; i < tag.length; ) {
    const { ch, len } = charAt(tag, i);
    if (!isWordChar(ch) && ch !== '.' && ch !== '-') {
      return problem(off + i, len, `invalid tag ${quote(tag)}: ${TAG_RULE}`);
    }
    i += len;
  }
  if (tag.length > MAX_TAG_LENGTH) {
    return problem(
      off + MAX_TAG_LENGTH,
      tag.length - MAX_TAG_LENGTH,
      `invalid tag ${quote(tag)}: ${TAG_RULE}; this one has ${tag.length} characters`,
    );
  }
  return null;
}

function checkAlgorithm(alg: string): boolean {
  if (alg.length === 0) return false;
  let prevSep = true; // disallows a leading separator
  for (let i = 0; i < alg.length; i++) {
    const c = alg.charAt(i);
    if (isLowerAlnum(c)) {
      prevSep = false;
    } else if (c === '.' || c === '+' || c === '_' || c === '-') {
      if (prevSep) return false;
      prevSep = true;
    } else {
      return false;
    }
  }
  return !prevSep;
}

function checkDigest(digest: string, off: number): Problem {
  if (digest.length === 0) {
    return problem(off - 1, 1, `empty digest after "@": ${DIGEST_SHAPE}`);
  }
  const colon = digest.indexOf(':');
  if (colon < 0) {
    return problem(off, digest.length, `invalid digest ${quote(digest)}: ${DIGEST_SHAPE}`);
  }
  const alg = digest.slice(0, colon);
  if (alg.length === 0) {
    return problem(off, 1, `invalid digest ${quote(digest)}: missing algorithm before ":"; ${DIGEST_SHAPE}`);
  }
  if (!checkAlgorithm(alg)) {
    return problem(off, alg.length, `invalid digest algorithm ${quote(alg)}: ${ALGORITHM_RULE}`);
  }
  const hex = digest.slice(colon + 1);
  const hexOff = off + colon + 1;
  let k = 0;
  while (k < hex.length && isLowerHex(hex.charAt(k))) k++;
  const expected = KNOWN_DIGEST_HEX_LENGTHS.get(alg);

  if (expected !== undefined) {
    const rule = `a ${alg} digest is exactly ${expected} lowercase hex digits`;
    if (k === hex.length) {
      if (hex.length === expected) return null;
      return problem(hexOff, hex.length, `invalid digest ${quote(digest)}: ${rule}, got ${hex.length}`);
    }
    const rest = hex.slice(k);
    if (k === expected) {
      const hint = rest.startsWith(':') ? '; a tag must come before the "@" digest' : '';
      return problem(hexOff + k, rest.length, `unexpected characters ${quote(rest)} after digest${hint}`);
    }
    const { ch, len } = charAt(hex, k);
    return problem(hexOff + k, len, `invalid digest ${quote(digest)}: ${rule}, found ${quote(ch)}`);
  }

  const rule = `the part after "${alg}:" must be at least ${MIN_UNKNOWN_DIGEST_HEX} lowercase hex digits`;
  if (k < hex.length) {
    const { ch, len } = charAt(hex, k);
    return problem(hexOff + k, len, `invalid digest ${quote(digest)}: ${rule}, found ${quote(ch)}`);
  }
  if (hex.length < MIN_UNKNOWN_DIGEST_HEX) {
    return problem(hexOff, hex.length, `invalid digest ${quote(digest)}: ${rule}, got ${hex.length}`);
  }
  return null;
}

/** A leading `scheme://` other than the accepted 'oci://' one; returns its length, or 0. */
function foreignSchemeLength(s: string): number {
  const first = s.charAt(0);
  if (!isLower(first) && !isUpper(first)) return 0;
  let i = 1;
  while (i < s.length && i < 32) {
    const c = s.charAt(i);
    if (!isAlnum(c) && c !== '+' && c !== '.' && c !== '-') break;
    i++;
  }
  return s.startsWith('://', i) ? i + 3 : 0;
}

// ---------------------------------------------------------------------------
// Public API.

/** Whether `input` uses the explicit 'oci://' prefix. */
export function isOciReference(input: string): boolean {
  return typeof input === 'string' && input.startsWith(OCI_PREFIX);
}

/**
 * Parse an image reference. Never throws: problems are returned with an offset
 * and length into `input` (an 'oci://' prefix counts towards the offset).
 */
export function parseReference(input: string, options?: ParseOptions): ParseResult {
  if (typeof input !== 'string') {
    return { ok: false, problem: problem(0, 0, 'reference must be a string') };
  }
  if (input.length > MAX_INPUT_LENGTH) {
    return {
      ok: false,
      problem: problem(
        0,
        input.length,
        `reference is too long: ${input.length} characters, at most ${MAX_INPUT_LENGTH} are accepted`,
      ),
    };
  }
  const base = input.startsWith(OCI_PREFIX) ? OCI_PREFIX.length : 0;
  const s = input.slice(base);
  const result = parseBody(s, options?.defaultTag === true);
  if (result.ok) return result;
  const p = result.problem;
  return { ok: false, problem: { offset: p.offset + base, length: p.length, message: p.message } };
}

function fail(offset: number, length: number, message: string): ParseResult {
  return { ok: false, problem: problem(offset, length, message) };
}

function parseBody(s: string, defaultTag: boolean): ParseResult {
  if (s.length === 0) return fail(0, 0, 'empty reference');

  // Whitespace is never part of a reference; it usually sneaks in by copy-paste.
  for (let i = 0; i < s.length; i++) {
    if (!isWhitespace(s.charAt(i))) continue;
    let j = i + 1;
    while (j < s.length && isWhitespace(s.charAt(j))) j++;
    const message =
      i === 0
        ? 'reference must not start with whitespace'
        : j === s.length
          ? 'reference must not end with whitespace'
          : 'reference must not contain whitespace';
    return fail(i, j - i, message);
  }

  if (s.startsWith(OCI_PREFIX)) {
    return fail(0, OCI_PREFIX.length, 'duplicate "oci://" prefix');
  }
  const schemeLength = foreignSchemeLength(s);
  if (schemeLength > 0) {
    return fail(
      0,
      schemeLength,
      `unsupported scheme ${quote(s.slice(0, schemeLength))}: only "oci://" may prefix an image reference`,
    );
  }

  // docker refuses a bare 64-hex string: it is an image id, not a name.
  if (s.length === 64 && [...s].every(isLowerHex)) {
    return fail(0, 64, 'a 64 hex digit string is an image id, not a reference; write "<repository>@sha256:<digest>"');
  }

  // Split off the digest: "@" can appear nowhere before it.
  const atSign = s.indexOf('@');
  const nameAndTag = atSign < 0 ? s : s.slice(0, atSign);
  const lastSlash = nameAndTag.lastIndexOf('/');

  if (lastSlash < 0 && nameAndTag.startsWith('[')) {
    return fail(0, nameAndTag.length, `missing repository after registry ${quote(nameAndTag)}`);
  }

  // The tag starts at the first ":" after the last "/" (a ":" before it is a port).
  const tagColon = nameAndTag.indexOf(':', lastSlash + 1);
  const name = tagColon < 0 ? nameAndTag : nameAndTag.slice(0, tagColon);

  if (name.length === 0) {
    return fail(0, 0, 'missing repository name');
  }

  // Registry or docker.io?
  const firstSlash = name.indexOf('/');
  const first = firstSlash < 0 ? name : name.slice(0, firstSlash);
  const hasRegistry =
    firstSlash >= 0 && (first.includes('.') || first.includes(':') || first.startsWith('[') || first === 'localhost');

  let registry = DEFAULT_REGISTRY;
  let path = name;
  let pathOffset = 0;
  if (hasRegistry) {
    const p = checkRegistry(first, 0);
    if (p) return { ok: false, problem: p };
    registry = first === LEGACY_DEFAULT_REGISTRY ? DEFAULT_REGISTRY : first;
    pathOffset = firstSlash + 1;
    path = name.slice(pathOffset);
    if (path.length === 0) {
      return fail(pathOffset, 0, `missing repository after registry ${quote(first)}`);
    }
  }
  const pathProblem = checkPath(path, pathOffset, !hasRegistry);
  if (pathProblem) return { ok: false, problem: pathProblem };

  let tag: string | undefined;
  if (tagColon >= 0) {
    tag = nameAndTag.slice(tagColon + 1);
    const p = checkTag(tag, tagColon + 1);
    if (p) return { ok: false, problem: p };
  }

  let digest: string | undefined;
  if (atSign >= 0) {
    digest = s.slice(atSign + 1);
    const p = checkDigest(digest, atSign + 1);
    if (p) return { ok: false, problem: p };
  }

  const repository = registry === DEFAULT_REGISTRY && !path.includes('/') ? `${OFFICIAL_NAMESPACE}/${path}` : path;
  const fullName = `${registry}/${repository}`;
  if (fullName.length > MAX_NAME_LENGTH) {
    return fail(
      0,
      name.length,
      `repository name is too long: ${quote(fullName)} has ${fullName.length} characters, at most ${MAX_NAME_LENGTH} are allowed`,
    );
  }

  const reference: Reference = { registry, repository };
  if (tag !== undefined) {
    reference.tag = tag;
  } else if (digest === undefined && defaultTag) {
    reference.tag = DEFAULT_TAG;
  }
  if (digest !== undefined) reference.digest = digest;
  return { ok: true, reference };
}

/** Canonical text form: 'registry/repository[:tag][@digest]'. */
export function formatReference(ref: Reference): string {
  let out = `${ref.registry}/${ref.repository}`;
  if (ref.tag !== undefined) out += `:${ref.tag}`;
  if (ref.digest !== undefined) out += `@${ref.digest}`;
  return out;
}

function isIpv4Loopback(host: string): boolean {
  const parts = host.split('.');
  if (parts.length !== 4 || parts[0] !== '127') return false;
  return parts.every((p) => p.length >= 1 && p.length <= 3 && [...p].every(isDigit) && Number(p) <= 255);
}

function isIpv6Loopback(host: string): boolean {
  const h = host.toLowerCase();
  const halves = h.split('::');
  let groups: string[];
  if (halves.length === 1) {
    groups = h.split(':');
  } else if (halves.length === 2) {
    const head = halves[0] ? halves[0].split(':') : [];
    const tail = halves[1] ? halves[1].split(':') : [];
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return false;
    groups = [...head, ...Array.from({ length: missing }, () => '0'), ...tail];
  } else {
    return false;
  }
  if (groups.length !== 8) return false;
  if (!groups.every((g) => g.length >= 1 && g.length <= 4 && [...g].every(isLowerHex))) return false;
  return groups.every((g, i) => Number.parseInt(g, 16) === (i === 7 ? 1 : 0));
}

/**
 * Whether a registry (as in Reference.registry) names the local machine:
 * 'localhost', any 127.0.0.0/8 address, or '[::1]', each with an optional ':port'.
 */
export function isLoopbackRegistry(registry: string): boolean {
  if (typeof registry !== 'string') return false;
  let rest: string;
  if (registry.startsWith('[')) {
    const close = registry.indexOf(']');
    if (close < 0 || !isIpv6Loopback(registry.slice(1, close))) return false;
    rest = registry.slice(close + 1);
  } else {
    const colon = registry.indexOf(':');
    const host = colon < 0 ? registry : registry.slice(0, colon);
    rest = colon < 0 ? '' : registry.slice(colon);
    if (host.toLowerCase() !== 'localhost' && !isIpv4Loopback(host)) return false;
  }
  if (rest === '') return true;
  return rest.startsWith(':') && checkPort(rest.slice(1), 0, registry) === null;
}
