/**
 * The cs-agent/1 wire format on its own: frames cut anywhere decode the same,
 * the payload cap holds, fields round-trip and reject truncation.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  MAX_PAYLOAD,
  Tag,
  decodeFields,
  encodeFields,
  encodeFrame,
  endsStream,
  fieldNumber,
  fieldText,
  fieldTexts,
} from '../../src/vm/protocol.js';
import { VmError } from '../../src/util/errors.js';

describe('frames', () => {
  it('have a 9-byte header: u32 BE length, type, u32 BE stream', () => {
    const frame = encodeFrame(FrameType.stdout, 0x01020304, Buffer.from('hi'));
    expect([...frame]).toEqual([0, 0, 0, 2, 0x04, 1, 2, 3, 4, 0x68, 0x69]);
    expect(HEADER_SIZE).toBe(9);
  });

  it('decode the same however the byte stream is cut', () => {
    const frameArb = fc.record({
      type: fc.integer({ min: 0, max: 255 }),
      stream: fc.integer({ min: 0, max: 0xffff_ffff }),
      payload: fc.uint8Array({ maxLength: 300 }),
    });
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 12 }), fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1 }), (frames, cuts) => {
        const bytes = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.stream, f.payload)));
        const decoder = new FrameDecoder();
        const out = [];
        let offset = 0;
        for (let i = 0; offset < bytes.length; i++) {
          const size = cuts[i % cuts.length] as number;
          out.push(...decoder.push(bytes.subarray(offset, offset + size)));
          offset += size;
        }
        expect(out.map((f) => ({ type: f.type, stream: f.stream, payload: new Uint8Array(f.payload) }))).toEqual(frames);
        expect(decoder.buffered).toBe(0);
      }),
      { numRuns: 200 },
    );
  });

  it('with an empty payload may end a chunk exactly', () => {
    const decoder = new FrameDecoder();
    const frames = decoder.push(Buffer.concat([encodeFrame(FrameType.stdin, 1, Buffer.from('x')), encodeFrame(FrameType.stdin, 1)]));
    expect(frames.map((f) => f.payload.length)).toEqual([1, 0]);
  });

  it('over 1 MiB are refused by the decoder and the encoder', () => {
    const decoder = new FrameDecoder();
    const header = Buffer.alloc(HEADER_SIZE);
    header.writeUInt32BE(MAX_PAYLOAD + 1, 0);
    expect(() => decoder.push(header)).toThrow(VmError);
    expect(decoder.buffered).toBe(0);
    expect(() => encodeFrame(FrameType.stdin, 1, Buffer.alloc(MAX_PAYLOAD + 1))).toThrow(/exceeds the limit/);
    // The cap itself is allowed.
    const ok = new FrameDecoder().push(encodeFrame(FrameType.stdin, 1, Buffer.alloc(MAX_PAYLOAD)));
    expect(ok[0]?.payload.length).toBe(MAX_PAYLOAD);
  });

  it('a smaller cap can be set for a relay', () => {
    const decoder = new FrameDecoder({ maxPayload: 10 });
    expect(() => decoder.push(encodeFrame(FrameType.stdin, 1, Buffer.alloc(11)))).toThrow(/11 bytes exceeds the limit of 10/);
  });

  it('EXIT, ERROR and INFO end a stream; STARTED and data do not', () => {
    expect([FrameType.exit, FrameType.error, FrameType.info].every(endsStream)).toBe(true);
    expect([FrameType.started, FrameType.stdout, FrameType.stderr].some(endsStream)).toBe(false);
  });
});

describe('fields', () => {
  it('round-trip, repeat, and read as text or numbers', () => {
    const payload = encodeFields([[Tag.arg, 'ls'], [Tag.arg, '-l'], [Tag.timeoutMs, 1500], [Tag.mode, '755'], [Tag.env, Buffer.from('A=ü')]]);
    const fields = decodeFields(payload);
    expect(fieldTexts(fields, Tag.arg)).toEqual(['ls', '-l']);
    expect(fieldNumber(fields, Tag.timeoutMs)).toBe(1500);
    expect(fieldNumber(fields, Tag.mode, 8)).toBe(0o755);
    expect(fieldText(fields, Tag.env)).toBe('A=ü');
    expect(fieldText(fields, Tag.cwd)).toBeUndefined();
    expect(fieldNumber(decodeFields(encodeFields([[Tag.code, '-1']])), Tag.code)).toBeUndefined();
  });

  it('running past the payload are a protocol error', () => {
    const payload = encodeFields([[Tag.arg, 'abc']]);
    expect(() => decodeFields(payload.subarray(0, payload.length - 1))).toThrow(/runs past the end/);
    expect(() => decodeFields(payload.subarray(0, 3))).toThrow(/cut short/);
    expect(decodeFields(Buffer.alloc(0))).toEqual([]);
  });
});
