// Canonical binary: big-endian fixed-width integers, str8 strings, nothing
// after the last field (docs/protocol.md, docs/sync.md §3). Pure functions
// over Uint8Array; u64 and i64 travel as BigInt so no value is rounded.

/** Thrown for bytes that are not the canonical encoding of what was asked. */
export class Malformed extends Error {
  constructor(what, detail) {
    super(`${what}: ${detail}`);
    this.name = "Malformed";
  }
}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });

/** ASCII domain tag followed by its zero byte. */
export function tag(name) {
  return concat(encoder.encode(name), Uint8Array.of(0));
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text) {
  if (!/^([0-9a-f]{2})*$/i.test(text)) throw new Malformed("hex", "not an even run of hex digits");
  return Uint8Array.from(text.match(/../g) ?? [], (h) => parseInt(h, 16));
}

export function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Appends fields in order; `bytes()` is the encoding so far. */
export class Writer {
  #parts = [];

  raw(bytes) {
    this.#parts.push(Uint8Array.from(bytes));
    return this;
  }
  u8(v) {
    return this.#int(v, 1);
  }
  u16(v) {
    return this.#int(v, 2);
  }
  u32(v) {
    return this.#int(v, 4);
  }
  u64(v) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, BigInt(v)));
    return this.raw(b);
  }
  i64(v) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, BigInt.asIntN(64, BigInt(v)));
    return this.raw(b);
  }
  /** One length byte, then that many bytes of UTF-8. */
  str8(text) {
    const b = encoder.encode(text);
    if (b.length > 255) throw new RangeError(`a str8 holds at most 255 bytes, not ${b.length}`);
    return this.u8(b.length).raw(b);
  }
  bytes() {
    return concat(...this.#parts);
  }
  #int(v, width) {
    if (!Number.isInteger(v) || v < 0 || v >= 2 ** (8 * width)) {
      throw new RangeError(`${v} does not fit ${width} byte(s)`);
    }
    const b = new Uint8Array(width);
    for (let i = width - 1; i >= 0; i--) {
      b[i] = v & 0xff;
      v = Math.floor(v / 256);
    }
    return this.raw(b);
  }
}

/** Reads fields in order; every read past the end and `end()` with bytes
 * left over throw `Malformed` naming `what`. */
export class Reader {
  #bytes;
  #at = 0;

  constructor(bytes, what) {
    this.#bytes = bytes;
    this.what = what;
  }
  get offset() {
    return this.#at;
  }
  take(n) {
    if (this.#at + n > this.#bytes.length) {
      throw new Malformed(this.what, `truncated: ${this.#bytes.length} bytes`);
    }
    const out = this.#bytes.slice(this.#at, this.#at + n);
    this.#at += n;
    return out;
  }
  /** Requires the domain tag `name` here. */
  expectTag(name) {
    const want = tag(name);
    if (!equal(this.take(want.length), want)) throw new Malformed(this.what, "wrong domain tag");
  }
  u8() {
    return this.take(1)[0];
  }
  u16() {
    const b = this.take(2);
    return (b[0] << 8) | b[1];
  }
  u32() {
    const b = this.take(4);
    return ((b[0] << 24) >>> 0) + (b[1] << 16) + (b[2] << 8) + b[3];
  }
  u64() {
    return new DataView(this.take(8).buffer).getBigUint64(0);
  }
  i64() {
    return new DataView(this.take(8).buffer).getBigInt64(0);
  }
  str8() {
    const b = this.take(this.u8());
    try {
      return strictDecoder.decode(b);
    } catch {
      throw new Malformed(this.what, "a string that is not UTF-8");
    }
  }
  end() {
    if (this.#at !== this.#bytes.length) {
      throw new Malformed(this.what, `${this.#bytes.length - this.#at} trailing byte(s)`);
    }
  }
}
