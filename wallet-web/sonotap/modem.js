// The acoustic modem's sending side, formats 2 of docs/modem.md: the fast
// profile (gates: coherent QPSK OFDM, §2b, §3b) and the robust profile
// (worst rooms: 16-FSK, §2c, §3c), a second implementation beside the Rust
// encoder, kept in step by wallet-web/test/modem.test.js (the documents'
// vectors to 2 LSB, and `sonotap modem decode`). Signals are made at
// 48 kHz and resampled for other output rates (§1).

import { RATE, chirp, fade, fft, gcd, sincKernels } from "./dsp.js";

export { RATE };
const Z = 81;
const BLOCK_COLS = 24;
const PEAK = 0.8;
const STEPS = [97, 101, 103, 107];

/** §2's hash, in 32-bit wrapping arithmetic. */
export function hash2(a, b) {
  let x = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca77) ^ 0x51515151) >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/** §3b: RM(1,7) of length − 1, 128 bits. */
export function headerBits(length) {
  const v = length - 1;
  const bits = [];
  for (let j = 0; j < 128; j++) {
    let ones = (v & 0x7f) & j;
    let parity = 0;
    while (ones) {
      parity ^= ones & 1;
      ones >>= 1;
    }
    bits.push(parity ^ (v >> 7));
  }
  return bits;
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** CRC-32 (IEEE 802.3, the one of zlib). */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function bitsOf(bytes) {
  const out = [];
  for (const byte of bytes) for (let b = 7; b >= 0; b--) out.push((byte >> b) & 1);
  return out;
}

/** The 802.11n LDPC base matrices (IEEE 802.11-2012 Annex F, Z = 81) of
 * §3b (rate 1/2) and §3c (rate 2/3): the shift of each 81 × 81 block, −1
 * for a zero block. */
export const LDPC_RATE_HALF = Object.freeze([
  [57, -1, -1, -1, 50, -1, 11, -1, 50, -1, 79, -1, 1, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
  [3, -1, 28, -1, 0, -1, -1, -1, 55, 7, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1],
  [30, -1, -1, -1, 24, 37, -1, -1, 56, 14, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1],
  [62, 53, -1, -1, 53, -1, -1, 3, 35, -1, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1, -1],
  [40, -1, -1, 20, 66, -1, -1, 22, 28, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1],
  [0, -1, -1, -1, 8, -1, 42, -1, 50, -1, -1, 8, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1],
  [69, 79, 79, -1, -1, -1, 56, -1, 52, -1, -1, -1, 0, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1],
  [65, -1, -1, -1, 38, 57, -1, -1, 72, -1, 27, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1],
  [64, -1, -1, -1, 14, 52, -1, -1, 30, -1, -1, 32, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1, -1],
  [-1, 45, -1, 70, 0, -1, -1, -1, 77, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1],
  [2, 56, -1, 57, 35, -1, -1, -1, -1, -1, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0],
  [24, -1, 61, -1, 60, -1, -1, 27, 51, -1, -1, 16, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0],
]);

export const LDPC_RATE_TWO_THIRDS = Object.freeze([
  [61, 75, 4, 63, 56, -1, -1, -1, -1, -1, -1, 8, -1, 2, 17, 25, 1, 0, -1, -1, -1, -1, -1, -1],
  [56, 74, 77, 20, -1, -1, -1, 64, 24, 4, 67, -1, 7, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1],
  [28, 21, 68, 10, 7, 14, 65, -1, -1, -1, 23, -1, -1, -1, 75, -1, -1, -1, 0, 0, -1, -1, -1, -1],
  [48, 38, 43, 78, 76, -1, -1, -1, -1, 5, 36, -1, 15, 72, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1],
  [40, 2, 53, 25, -1, 52, 62, -1, 20, -1, -1, 44, -1, -1, -1, -1, 0, -1, -1, -1, 0, 0, -1, -1],
  [69, 23, 64, 10, 22, -1, 21, -1, -1, -1, -1, -1, 68, 23, 29, -1, -1, -1, -1, -1, -1, 0, 0, -1],
  [12, 0, 68, 20, 55, 61, -1, 40, -1, -1, -1, 52, -1, -1, -1, 44, -1, -1, -1, -1, -1, -1, 0, 0],
  [58, 8, 34, 64, 78, -1, -1, 11, 78, 24, -1, -1, -1, -1, -1, 58, 1, -1, -1, -1, -1, -1, -1, 0],
]);

/** §3b's encoding steps: the parity bits of one codeword's information
 * bits `info` under `table` (12 block rows for rate 1/2, 8 for 2/3). */
export function ldpcParity(info, table) {
  const rows = table.length;
  const cols = BLOCK_COLS - rows;
  const shifted = (j, s, r) => info[Z * j + ((r + s) % Z)];
  const lambda = table.map((row) => {
    const acc = new Uint8Array(Z);
    for (let j = 0; j < cols; j++) {
      if (row[j] >= 0) for (let r = 0; r < Z; r++) acc[r] ^= shifted(j, row[j], r);
    }
    return acc;
  });
  const p = new Array(rows);
  p[0] = new Uint8Array(Z);
  for (const l of lambda) for (let r = 0; r < Z; r++) p[0][r] ^= l[r];
  p[1] = lambda[0].map((v, r) => v ^ p[0][(r + 1) % Z]);
  for (let i = 1; i < rows - 1; i++) {
    p[i + 1] = lambda[i].map((v, r) => v ^ p[i][r] ^ (i === rows / 2 ? p[0][r] : 0));
  }
  return p.flatMap((block) => Array.from(block));
}

/** §3b's code stream: payload ‖ CRC-32 in as few shortened codewords as
 * hold it, each its share of information bits then its parity bits. */
export function codeStream(payload, table) {
  const infoMax = (BLOCK_COLS - table.length) * Z;
  const crc = crc32(payload);
  const bits = bitsOf([...payload, crc >>> 24, (crc >>> 16) & 0xff, (crc >>> 8) & 0xff, crc & 0xff]);
  const c = Math.ceil(bits.length / infoMax);
  const stream = [];
  let pos = 0;
  for (let i = 0; i < c; i++) {
    const k = Math.floor(bits.length / c) + (i < bits.length % c ? 1 : 0);
    const info = bits.slice(pos, pos + k).concat(new Array(infoMax - k).fill(0));
    pos += k;
    stream.push(...info.slice(0, k), ...ldpcParity(info, table));
  }
  return stream;
}

/** §3b's multiplicative layout: `slots` cells carry stream cells
 * 0..used−1, then repeats, in the order u·P mod slots. Returns, for each
 * slot, the stream cell it carries. */
function layout(used, slots) {
  const step = STEPS.find((p) => gcd(p, slots) === 1);
  const carried = new Int32Array(slots);
  for (let u = 0; u < slots; u++) {
    const source = u < used ? u : Math.floor(((u - used) * used) / (slots - used));
    carried[(u * step) % slots] = source;
  }
  return carried;
}

/** Adds one symbol's `cp + n + ramp` faded samples of the periodic `x`
 * (length n) to `frame` at `start` (§2: cyclic prefix, cross-fades). */
function addSymbol(frame, start, x, cp, ramp) {
  const n = x.length;
  const total = cp + n + ramp;
  for (let i = 0; i < total; i++) {
    frame[start + i] += fade(Math.min(i, total - 1 - i), ramp) * x[(i - cp + n) % n];
  }
}

function scaleToPeak(frame) {
  let peak = 0;
  for (const v of frame) peak = Math.max(peak, Math.abs(v));
  return frame.map((v) => (PEAK * v) / peak);
}

function rms(values) {
  let sum = 0;
  for (const v of values) sum += v * v;
  return Math.sqrt(sum / values.length);
}

const FAST = { n: 4096, cp: 256, ramp: 64, firstBin: 853, carriers: 672, chirp: 2048, headerCells: 64 };

/** The fast profile's format-2 frame for `payload` (1–256 bytes), at
 * 48 kHz, peak 0.8 (§2b, §3b). */
export function encodeFast(payload) {
  checkPayload(payload);
  const { n, cp, ramp, firstBin, carriers, headerCells } = FAST;
  const stream = codeStream(payload, LDPC_RATE_HALF);
  const used = stream.length / 2;
  const symbols = Math.ceil((headerCells + used) / carriers);
  const slots = carriers * symbols - headerCells;
  const cells = new Array(carriers * symbols);
  const h = headerBits(payload.length);
  const header = new Set();
  for (let j = 0; j < headerCells; j++) {
    const carrier = Math.floor(((2 * j + 1) * carriers) / 128);
    cells[carrier] = [h[2 * j], h[2 * j + 1]];
    header.add(carrier);
  }
  const slotCells = [];
  for (let c = 0; c < carriers * symbols; c++) if (!header.has(c)) slotCells.push(c);
  const carried = layout(used, slots);
  for (let s = 0; s < slots; s++) {
    const u = carried[s];
    cells[slotCells[s]] = [stream[2 * u], stream[2 * u + 1]];
  }
  const reference = Array.from({ length: carriers }, (_, i) => {
    const v = hash2(5, i);
    return [v & 1, (v >> 1) & 1];
  });
  const all = [reference];
  for (let m = 0; m < symbols; m++) all.push(cells.slice(carriers * m, carriers * (m + 1)));

  const symbolLen = n + cp;
  const length = 2 * FAST.chirp + all.length * symbolLen;
  const frame = new Float64Array(length + ramp);
  const amplitude = Math.SQRT1_2;
  all.forEach((symbolCells, m) => {
    const re = new Float64Array(n);
    const im = new Float64Array(n);
    symbolCells.forEach(([b0, b1], i) => {
      re[firstBin + i] = (1 - 2 * b0) * amplitude;
      im[firstBin + i] = (1 - 2 * b1) * amplitude;
    });
    fft(re, im, true);
    addSymbol(frame, FAST.chirp + m * symbolLen, re, cp, ramp);
  });
  const body = rms(frame.subarray(FAST.chirp, FAST.chirp + all.length * symbolLen));
  const c = chirp(FAST.chirp, 9900, 17900);
  const second = FAST.chirp + all.length * symbolLen;
  for (let i = 0; i < FAST.chirp; i++) {
    frame[i] += body * c[i];
    frame[second + i] += body * c[i];
  }
  return scaleToPeak(frame.slice(0, length));
}

const ROBUST = { n: 2048, cp: 256, ramp: 64, firstBin: 427, groups: 21, tones: 16, chirp: 4096, headerCells: 32 };

/** The robust profile's format-2 frame for `payload` (1–256 bytes), at
 * 48 kHz, peak 0.8 (§2c, §3c). */
export function encodeRobust(payload) {
  checkPayload(payload);
  const { n, cp, ramp, firstBin, groups, tones, headerCells } = ROBUST;
  const stream = codeStream(payload, LDPC_RATE_TWO_THIRDS);
  const used = stream.length / 4;
  const nibble = (bits, at) => 8 * bits[at] + 4 * bits[at + 1] + 2 * bits[at + 2] + bits[at + 3];
  const symbols = Math.ceil((headerCells + used) / groups);
  const slots = groups * symbols - headerCells;
  const h = headerBits(payload.length);
  const values = new Array(groups * symbols);
  for (let j = 0; j < headerCells; j++) values[j] = nibble(h, 4 * j);
  const carried = layout(used, slots);
  for (let s = 0; s < slots; s++) values[headerCells + s] = nibble(stream, 4 * carried[s]);

  const symbolLen = n + cp;
  const frame = new Float64Array(ROBUST.chirp + symbolLen * symbols + ramp);
  const cos = Float64Array.from({ length: n }, (_, j) => Math.cos((2 * Math.PI * j) / n));
  for (let m = 0; m < symbols; m++) {
    const x = new Float64Array(n);
    for (let g = 0; g < groups; g++) {
      const v = values[groups * m + g];
      const k = firstBin + tones * g + (v ^ (v >> 1));
      // The phase is 2π·(hash2(3 + m, k) mod 1024)/1024: a whole number of
      // steps of 2π/N.
      const offset = (hash2(3 + m, k) % 1024) * (n / 1024);
      for (let t = 0; t < n; t++) x[t] += cos[(k * t + offset) % n];
    }
    addSymbol(frame, ROBUST.chirp + symbolLen * m, x, cp, ramp);
  }
  const amplitude = Math.SQRT2 * rms(frame.subarray(ROBUST.chirp));
  const c = chirp(ROBUST.chirp, 17900, 10000);
  for (let i = 0; i < ROBUST.chirp; i++) frame[i] += amplitude * c[i];
  return scaleToPeak(frame);
}

function checkPayload(payload) {
  if (payload.length < 1 || payload.length > 256) {
    throw new RangeError(`a frame carries 1 to 256 bytes, not ${payload.length}`);
  }
}

/** The resampling kernels from 48 kHz to each output rate used. */
const kernels = new Map();
function kernelsFor(rate) {
  if (!kernels.has(rate)) kernels.set(rate, sincKernels(RATE, rate));
  return kernels.get(rate);
}

/** `samples` at 48 kHz converted to `rate` Hz (a whole number): a
 * Blackman-windowed sinc, 32 zero crossings either side, cut off at 95 %
 * of the lower Nyquist frequency, unity gain at DC (docs/modem.md §4's
 * resampler). */
export function resample(samples, rate) {
  if (rate === RATE) return Float64Array.from(samples);
  if (!Number.isInteger(rate) || rate < 8000 || rate > 768000) {
    throw new RangeError(`an output rate of 8 to 768 kHz, not ${rate}`);
  }
  const { half, weights } = kernelsFor(rate);
  const out = new Float64Array(Math.round((samples.length * rate) / RATE));
  const n = samples.length;
  for (let i = 0; i < out.length; i++) {
    const base = Math.floor((i * RATE) / rate);
    const w = weights(i);
    const first = base - half + 1;
    let sum = 0;
    const from = Math.max(0, -first);
    const to = Math.min(w.length, n - first);
    for (let j = from; j < to; j++) sum += samples[first + j] * w[j];
    out[i] = sum;
  }
  return out;
}
