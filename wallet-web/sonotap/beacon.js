// Hearing a gate's beacon (docs/protocol.md §3a, docs/modem.md §7): the
// 17 bytes a reader repeats from its speaker (its reader tag, a
// short-lived challenge and its clock), which a wallet binds its
// version-2 token to. A second implementation of §7.3's decoder beside the
// Rust one, kept in step by wallet-web/test/beacon.test.js (the document's
// vector, and beacons `sonotap modem beacon encode` renders).
//
// It leaves out one step of §7.3: the sender's clock is not estimated and
// undone (step 4). At ±100 ppm, a phone's and a reader's crystals, a tone
// at 19.8 kHz moves 2 Hz, a tenth of a bin; the Rust decoder takes the
// step for the ±300 ppm its grid tests, and near the limit of what it
// hears, 300 ppm may cost this one receptions the Rust one makes.

import { Malformed, Reader, hex } from "./bytes.js";
import { RATE, chirp, fft, gcd, sincKernels } from "./dsp.js";
import { crc32 } from "./modem.js";

/** §3a: a beacon's first byte. */
export const BEACON_KIND = 0xb1;
/** §3a: a beacon's length. */
export const BEACON_LEN = 17;

/** The gate a beacon names: `readerTag` (u32), `challenge` (8 bytes),
 * `readerTime` (the gate's clock, Unix seconds). Throws `Malformed`
 * unless `bytes` is exactly one beacon. */
export function decodeBeacon(bytes) {
  if (bytes.length !== BEACON_LEN) throw new Malformed("beacon", `${bytes.length} bytes, not ${BEACON_LEN}`);
  const r = new Reader(bytes, "beacon");
  const kind = r.u8();
  if (kind !== BEACON_KIND) throw new Malformed("beacon", `first byte 0x${hex([kind])}, not 0xb1`);
  const beacon = { readerTag: r.u32(), challenge: r.take(8), readerTime: r.u32() };
  r.end();
  return beacon;
}

/** §7's numbers. */
const B = { n: 2048, cp: 256, ramp: 128, backoff: 96, firstBin: 781, groups: 16, tones: 4, chirp: 4096 };
const SYMBOL = B.n + B.cp;
const BINS = B.groups * B.tones;
/** §7.3: the chirp's normalised correlation that makes a candidate. */
const THRESHOLD = 0.3;
/** §7.3: a header's best correlation over the sum of its |LLR|. */
const HEADER_CONFIDENCE = 0.5;
const LLR_LIMIT = 16;
/** §7.3: audio kept at most (the longest beacon, 1.05 s, and room). */
export const BEACON_BUFFER_SECONDS = 3;
const MAX_PAYLOAD = 32;
/** The lowest input rate: the chirp's top (19.8 kHz) + 500 Hz below Nyquist. */
export const BEACON_MIN_RATE = 40600;

/** §7.2: where the bits of a `len`-byte beacon go. */
export function beaconLayout(len) {
  if (!Number.isInteger(len) || len < 1 || len > MAX_PAYLOAD) throw new RangeError(`a beacon of 1–32 bytes, not ${len}`);
  const info = 8 * len + 32;
  const coded = 2 * (info + 6);
  const dataSymbols = Math.ceil(coded / 32);
  const slots = 32 * dataSymbols;
  let spread = Math.floor((slots * 382) / 1000);
  while (gcd(spread, slots) !== 1) spread++;
  return {
    len,
    info,
    coded,
    slots,
    symbols: 1 + dataSymbols,
    frameLen: B.chirp + (1 + dataSymbols) * SYMBOL + B.ramp,
    position: (u) => (u * spread) % slots,
    source: (u) => (u < coded ? u : Math.floor(((u - coded) * coded) / (slots - coded))),
  };
}

// ---- soft decisions (§7.3 steps 3 and 5) ----

const GRAY = [0, 1, 3, 2];

/** Each row's energies scaled to the rows' mean level (robust format 2's
 * levelling: a symbol heard louder or softer counts alike). */
function levelled(rows) {
  const levels = rows.map((row) => row.reduce((a, b) => a + b, 0) / row.length);
  const mean = levels.reduce((a, b) => a + b, 0) / Math.max(1, levels.length);
  return rows.map((row, m) => {
    const level = levels[m];
    const ok = level > 0 && mean > 0 && Number.isFinite(level) && Number.isFinite(mean);
    return ok ? row.map((e) => (e * mean) / level) : row;
  });
}

/** Two LLRs per cell (positive: the bit is 0) from each symbol's 64 tone
 * energies: noise from the median, signal per group, a tone's metric
 * E·S/(N(N+S)), each bit the log of its values' summed likelihoods. */
function llrs(rows) {
  const out = Array.from({ length: rows.length * B.groups }, () => [0, 0]);
  const all = rows.flat().filter(Number.isFinite);
  if (!all.length) return out;
  const sorted = Float64Array.from(all).sort();
  const noise = sorted[Math.floor(all.length / 2)] / Math.log(3);
  const signalOf = (mean) => Math.max(B.tones * (mean - noise), 0.5 * noise);
  const bandSignal = signalOf(all.reduce((a, b) => a + b, 0) / all.length);
  const metric = [0, 0, 0, 0];
  for (let g = 0; g < B.groups; g++) {
    let signal = bandSignal;
    if (rows.length >= 4) {
      let sum = 0;
      let count = 0;
      for (const row of rows) {
        for (let t = 0; t < B.tones; t++) {
          const e = row[g * B.tones + t];
          if (Number.isFinite(e)) {
            sum += e;
            count++;
          }
        }
      }
      signal = signalOf(sum / Math.max(1, count));
    }
    if (!(noise > 0 && signal > 0 && Number.isFinite(noise) && Number.isFinite(signal))) continue;
    rows.forEach((row, m) => {
      for (let v = 0; v < B.tones; v++) {
        const x = row[g * B.tones + GRAY[v]];
        metric[v] = ((Number.isFinite(x) ? x : 0) / noise) * (signal / (noise + signal));
      }
      const top = Math.max(...metric);
      const cell = out[m * B.groups + g];
      for (let bit = 0; bit < 2; bit++) {
        const mask = 1 << (1 - bit);
        let zero = 0;
        let one = 0;
        metric.forEach((x, v) => {
          if (v & mask) one += Math.exp(x - top);
          else zero += Math.exp(x - top);
        });
        const value = Math.log(Math.max(zero, 1e-30) / Math.max(one, 1e-30));
        cell[bit] = Number.isFinite(value) ? Math.max(-LLR_LIMIT, Math.min(LLR_LIMIT, value)) : 0;
      }
    });
  }
  return out;
}

/** §7.2's header: the length from the first symbol's 32 LLRs by a fast
 * Hadamard transform (RM(1,5)), and how sure; null if the code's sixth
 * bit is set or there is nothing to go on. */
function decodeHeader(cells) {
  const w = cells.slice(0, B.groups).flat();
  if (w.length !== 32) return null;
  const total = w.reduce((a, v) => a + Math.abs(v), 0);
  for (let h = 1; h < 32; h *= 2) {
    for (let i = 0; i < 32; i += 2 * h) {
      for (let j = i; j < i + h; j++) [w[j], w[j + h]] = [w[j] + w[j + h], w[j] - w[j + h]];
    }
  }
  let best = 0;
  for (let j = 1; j < 32; j++) if (Math.abs(w[j]) > Math.abs(w[best])) best = j;
  if (!(total > 0) || !Number.isFinite(total) || w[best] < 0) return null;
  return { len: best + 1, confidence: w[best] / total };
}

/** §7.2's convolutional code (802.11a's, 133 and 171 octal): the two code
 * bits leaving `state` (the last 6 bits, newest in bit 5) with `bit`. */
function outputs(state, bit) {
  const window = (bit << 6) | state;
  const parity = (x) => {
    let p = 0;
    for (; x; x &= x - 1) p ^= 1;
    return p;
  };
  return [parity(window & 0o133), parity(window & 0o171)];
}
const BRANCH = Array.from({ length: 64 }, (_, s) => [outputs(s, 0), outputs(s, 1)]);

/** Soft-decision Viterbi over the 64 states, starting and ending in 0:
 * the `info` bits most likely sent, or null. */
function viterbi(llr, info) {
  const steps = info + 6;
  let metric = new Float64Array(64).fill(-Infinity);
  metric[0] = 0;
  let fresh = new Float64Array(64);
  const decisions = Array.from({ length: steps }, () => new Uint8Array(64));
  for (let step = 0; step < steps; step++) {
    const l0 = llr[2 * step];
    const l1 = llr[2 * step + 1];
    fresh.fill(-Infinity);
    for (let to = 0; to < 64; to++) {
      const bit = to >> 5;
      if (step >= info && bit) continue;
      const base = (to << 1) & 63;
      for (let low = 0; low < 2; low++) {
        const from = base | low;
        if (metric[from] === -Infinity) continue;
        const [a, b] = BRANCH[from][bit];
        const m = metric[from] + 0.5 * ((a ? -l0 : l0) + (b ? -l1 : l1));
        if (m > fresh[to]) {
          fresh[to] = m;
          decisions[step][to] = low;
        }
      }
    }
    [metric, fresh] = [fresh, metric];
  }
  if (metric[0] === -Infinity) return null;
  const bits = new Uint8Array(steps);
  let state = 0;
  for (let step = steps - 1; step >= 0; step--) {
    bits[step] = state >> 5;
    state = ((state << 1) & 63) | decisions[step][state];
  }
  return bits.subarray(0, info);
}

/** The payload the body's LLRs carry, if its CRC-32 matches. */
function decodeBody(cells, layout) {
  const coded = new Float64Array(layout.coded);
  for (let u = 0; u < layout.slots; u++) {
    const at = layout.position(u);
    const cell = cells[B.groups + (at >> 1)];
    if (!cell) return null;
    coded[layout.source(u)] += cell[at & 1];
  }
  for (let i = 0; i < coded.length; i++) {
    coded[i] = Number.isNaN(coded[i]) ? 0 : Math.max(-1e6, Math.min(1e6, coded[i]));
  }
  const bits = viterbi(coded, layout.info);
  if (!bits) return null;
  const bytes = new Uint8Array(layout.info / 8);
  for (let i = 0; i < bits.length; i++) bytes[i >> 3] |= bits[i] << (7 - (i & 7));
  const payload = bytes.slice(0, layout.len);
  const crc = crc32(payload);
  const sent = bytes.slice(layout.len);
  const matches = sent[0] === crc >>> 24 && sent[1] === ((crc >>> 16) & 255) && sent[2] === ((crc >>> 8) & 255) && sent[3] === (crc & 255);
  return matches ? payload : null;
}

/** §7.3 step 7: the strongest tone of each group, the groups' powers
 * summed, averaged over the symbols, dB relative to a full-scale sine. */
function levelDbfs(rows) {
  let sum = 0;
  for (const row of rows) {
    let power = 0;
    for (let g = 0; g < B.groups; g++) power += Math.max(...row.slice(g * B.tones, (g + 1) * B.tones));
    sum += (power * 4) / (B.n * B.n);
  }
  const mean = sum / Math.max(1, rows.length);
  return mean > 0 && Number.isFinite(mean) ? Math.max(-200, 10 * Math.log10(mean)) : -200;
}

// ---- input: resampling to 48 kHz, the chirp's matched filter ----

/** Streaming conversion of `from` Hz to 48 kHz, with docs/modem.md §4's
 * kernel (dsp.js `sincKernels`, as modem.js's `resample`). */
class ToInternalRate {
  constructor(from) {
    this.from = from;
    if (from === RATE) return;
    ({ half: this.half, weights: this.weights } = sincKernels(from, RATE));
    // Input kept (silence before the stream), from absolute input sample
    // `held`, and the next output.
    this.input = new Float64Array(this.half);
    this.held = -this.half;
    this.next = 0;
  }

  /** The 48 kHz samples that `samples` completes. */
  push(samples) {
    if (this.from === RATE) return Float64Array.from(samples);
    const joined = new Float64Array(this.input.length + samples.length);
    joined.set(this.input);
    joined.set(samples, this.input.length);
    const out = [];
    const end = this.held + joined.length;
    for (;;) {
      const base = Math.floor((this.next * this.from) / RATE);
      const first = base - this.half + 1;
      if (base + this.half >= end) break;
      const w = this.weights(this.next);
      let sum = 0;
      for (let j = 0; j < w.length; j++) sum += joined[first - this.held + j] * w[j];
      out.push(sum);
      this.next++;
    }
    const keepFrom = Math.floor((this.next * this.from) / RATE) - this.half + 1;
    const drop = Math.max(0, keepFrom - this.held);
    this.input = joined.slice(drop);
    this.held += drop;
    return Float64Array.from(out);
  }
}

/** §4.2's matched filter for the falling chirp, block by block: the
 * correlation of the band-limited analytic signal with the chirp's,
 * normalised by the energy under it (1 for the chirp alone). */
class ChirpFilter {
  constructor() {
    this.len = B.chirp;
    this.size = 16384;
    const binHz = RATE / this.size;
    const lo = Math.max(1, Math.floor((18250 - 300) / binHz));
    const hi = Math.min(this.size / 2 - 1, Math.ceil((19800 + 300) / binHz));
    this.lo = lo;
    this.hi = hi;
    const re = new Float64Array(this.size);
    const im = new Float64Array(this.size);
    re.set(chirp(B.chirp, 19800, 18250));
    fft(re, im);
    // conj(2·T) on the band, the template's energy.
    this.tre = new Float64Array(this.size);
    this.tim = new Float64Array(this.size);
    let energy = 0;
    for (let k = lo; k <= hi; k++) {
      this.tre[k] = 2 * re[k];
      this.tim[k] = -2 * im[k];
      energy += (4 * (re[k] * re[k] + im[k] * im[k])) / this.size;
    }
    this.energy = energy;
  }

  /** Lags each block yields. */
  get hop() {
    return this.size - this.len + 1;
  }

  /** Scores for lags 0..hop of a `size`-sample block. */
  scores(block) {
    const n = this.size;
    const are = new Float64Array(n);
    const aim = new Float64Array(n);
    are.set(block.subarray(0, n));
    fft(are, aim);
    const cre = new Float64Array(n);
    const cim = new Float64Array(n);
    for (let k = 0; k < n; k++) {
      if (k < this.lo || k > this.hi) {
        are[k] = 0;
        aim[k] = 0;
        continue;
      }
      const xr = (2 * are[k]) / n;
      const xi = (2 * aim[k]) / n;
      are[k] = xr;
      aim[k] = xi;
      cre[k] = xr * this.tre[k] - xi * this.tim[k];
      cim[k] = xr * this.tim[k] + xi * this.tre[k];
    }
    fft(are, aim, true);
    fft(cre, cim, true);
    const prefix = new Float64Array(n + 1);
    for (let i = 0; i < n; i++) prefix[i + 1] = prefix[i] + are[i] * are[i] + aim[i] * aim[i];
    const out = new Float64Array(this.hop);
    for (let t = 0; t < out.length; t++) {
      const denom = Math.sqrt(Math.max(0, prefix[t + this.len] - prefix[t]) * this.energy);
      out[t] = denom > 1e-12 ? Math.min(1, Math.hypot(cre[t], cim[t]) / denom) : 0;
    }
    return out;
  }
}

/** The highest score above the threshold with none higher within a chirp
 * length after it: its fractional position (a parabola through its
 * neighbours). */
class PeakPicker {
  best = null;

  feed(first, scores, len) {
    const settled = [];
    for (let i = 0; i < scores.length; i++) {
      const at = first + i;
      const s = scores[i];
      if (this.best && this.best.next === null && at === this.best.at + 1) this.best.next = s;
      if (s >= THRESHOLD && (!this.best || s > this.best.score)) {
        this.best = { at, score: s, prev: i > 0 ? scores[i - 1] : s, next: null };
      }
      if (this.best && at >= this.best.at + len) {
        const { at: peak, score, prev } = this.best;
        const next = this.best.next ?? score;
        this.best = null;
        const curve = prev - 2 * score + next;
        const frac = curve < 0 ? Math.max(-0.5, Math.min(0.5, (0.5 * (prev - next)) / curve)) : 0;
        settled.push(peak + frac);
      }
    }
    return settled;
  }
}

/** Listens for readers' beacons in a stream of PCM (§7.3): push chunks of
 * any size at `sampleRate` (40.6 kHz and up), get every beacon heard, each
 * repetition too, as `{ payload, start, end, levelDbfs }` (start and end
 * in samples at 48 kHz since the stream began). At most
 * `BEACON_BUFFER_SECONDS` of audio is kept. */
export class BeaconDecoder {
  constructor(sampleRate) {
    if (!Number.isInteger(sampleRate) || sampleRate < BEACON_MIN_RATE || sampleRate > 768000) {
      throw new RangeError(`a beacon is heard at 40.6 kHz or more, not ${sampleRate} Hz`);
    }
    this.resampler = new ToInternalRate(sampleRate);
    this.filter = new ChirpFilter();
    this.peaks = new PeakPicker();
    this.buf = new Float64Array(0);
    this.bufStart = 0;
    this.next = 0;
    this.pending = [];
    this.spans = [];
  }

  /** Feeds samples; returns the beacons they completed. */
  push(samples) {
    const out = [];
    const input = ArrayBuffer.isView(samples) ? samples : Float64Array.from(samples);
    for (let at = 0; at < input.length; at += RATE) {
      const piece = Float64Array.from(input.subarray(at, at + RATE), (v) =>
        Number.isFinite(v) ? Math.max(-1e6, Math.min(1e6, v)) : 0,
      );
      this.#append(this.resampler.push(piece));
      out.push(...this.#step());
    }
    return out;
  }

  /** Treats the stream as ended (silence after it) and returns what that
   * completes. */
  finish() {
    const pad = this.filter.size + SYMBOL;
    this.#append(this.resampler.push(new Float64Array(pad)));
    this.#append(new Float64Array(pad));
    return this.#step();
  }

  #append(more) {
    const joined = new Float64Array(this.buf.length + more.length);
    joined.set(this.buf);
    joined.set(more, this.buf.length);
    this.buf = joined;
  }

  #step() {
    this.#detect();
    const out = this.#work();
    this.#trim();
    return out;
  }

  get #end() {
    return this.bufStart + this.buf.length;
  }

  #inSpan(start, slack) {
    return this.spans.some(([s, e]) => start + slack >= s && start < e);
  }

  #detect() {
    const { size, hop } = this.filter;
    while (this.next >= this.bufStart && this.next + size <= this.#end) {
      const from = this.next - this.bufStart;
      const scores = this.filter.scores(this.buf.subarray(from, from + size));
      for (const start of this.peaks.feed(this.next, scores, B.chirp)) {
        if (!this.#inSpan(start, B.chirp / 2)) this.pending.push({ start, len: null });
      }
      this.next += hop;
    }
  }

  /** Sample just past the first `m` symbols of a frame whose chirp starts
   * at `start`, and its fade. */
  static #symbolEnd(start, m) {
    return Math.ceil(Math.max(0, start + B.chirp + m * SYMBOL)) + B.ramp + 160;
  }

  /** The 64 tone energies of symbols 0..count. */
  #energies(start, count) {
    const rows = [];
    const re = new Float64Array(B.n);
    const im = new Float64Array(B.n);
    for (let m = 0; m < count; m++) {
      const at = Math.floor(start - this.bufStart + B.chirp + m * SYMBOL + (B.cp - B.backoff));
      if (at < 0 || at + B.n > this.buf.length) return null;
      re.set(this.buf.subarray(at, at + B.n));
      im.fill(0);
      fft(re, im);
      const row = new Array(BINS);
      for (let k = 0; k < BINS; k++) {
        const b = B.firstBin + k;
        row[k] = re[b] * re[b] + im[b] * im[b];
      }
      rows.push(row);
    }
    return rows;
  }

  /** A candidate's next step: "wait" for more audio, "drop", or the
   * beacon heard. */
  #advance(cand) {
    if (cand.start + B.chirp < this.bufStart) return "drop";
    if (cand.len === null) {
      if (BeaconDecoder.#symbolEnd(cand.start, 1) > this.#end) return "wait";
      const header = this.#energies(cand.start, 1);
      const decoded = header && decodeHeader(llrs(header));
      if (!decoded || decoded.confidence < HEADER_CONFIDENCE) return "drop";
      cand.len = decoded.len;
    }
    const layout = beaconLayout(cand.len);
    if (BeaconDecoder.#symbolEnd(cand.start, layout.symbols) > this.#end) return "wait";
    const rows = this.#energies(cand.start, layout.symbols);
    const payload = rows && decodeBody(llrs(levelled(rows)), layout);
    if (!payload) return "drop";
    const start = Math.max(0, Math.floor(cand.start));
    return { payload, start, end: start + layout.frameLen, levelDbfs: levelDbfs(rows) };
  }

  #work() {
    const out = [];
    const keep = [];
    for (const cand of this.pending) {
      const step = this.#advance(cand);
      if (step === "wait") keep.push(cand);
      else if (step !== "drop") {
        this.spans.push([step.start, step.end]);
        out.push(step);
      }
    }
    this.pending = keep.filter((c) => !this.#inSpan(c.start, 1));
    return out;
  }

  #trim() {
    const end = this.#end;
    const floor = Math.max(0, end - BEACON_BUFFER_SECONDS * RATE);
    this.pending = this.pending.filter((c) => Math.max(0, c.start) >= floor);
    if (this.next < floor) {
      this.next = floor;
      this.peaks.best = null;
    }
    let keepFrom = this.next;
    if (this.peaks.best) keepFrom = Math.min(keepFrom, this.peaks.best.at - 2);
    for (const c of this.pending) keepFrom = Math.min(keepFrom, Math.max(0, Math.floor(c.start) - 2));
    keepFrom = Math.max(keepFrom, floor, this.bufStart);
    const drop = Math.min(keepFrom - this.bufStart, this.buf.length);
    if (drop > 0) {
      this.buf = this.buf.slice(drop);
      this.bufStart += drop;
    }
    const longest = beaconLayout(MAX_PAYLOAD).frameLen;
    this.spans = this.spans.filter(([, e]) => e + longest >= end);
  }

  /** Samples buffered and candidates pending (for the memory test). */
  get buffered() {
    return this.buf.length + this.pending.length;
  }
}

/** How long a beacon heard binds a payment: a reference gate accepts its
 * challenge 30 s from announcing it and draws a new one every 10 s
 * (docs/protocol.md §3a), so one heard 15 s ago has at least 5 s left. */
export const GATE_BINDS_MS = 15_000;
/** Beacons heard within this of the newest are one round: the gates in
 * earshot now (a gate repeats its beacon every 1.5–2 s). */
export const GATE_ROUND_MS = 3_000;

/** The gate a wallet binds its token to (docs/protocol.md §3a), from the
 * beacons it heard: `heard` is `[{ beacon, ageMs, levelDbfs }]` (beacon as
 * `decodeBeacon` gives it). Of the round heard last, the loudest gate (by
 * its loudest beacon in the round: one faint reception does not make it
 * far), with its newest challenge. Null if nothing was heard within
 * `GATE_BINDS_MS`. */
export function chooseGate(heard) {
  const fresh = heard.filter((h) => h.ageMs <= GATE_BINDS_MS);
  if (!fresh.length) return null;
  const newest = Math.min(...fresh.map((h) => h.ageMs));
  const byGate = new Map();
  for (const h of fresh) {
    if (h.ageMs - newest > GATE_ROUND_MS) continue;
    const seen = byGate.get(h.beacon.readerTag);
    byGate.set(h.beacon.readerTag, {
      newest: !seen || h.ageMs < seen.newest.ageMs ? h : seen.newest,
      loudest: Math.max(h.levelDbfs, seen?.loudest ?? -Infinity),
    });
  }
  return [...byGate.values()].reduce((best, g) => (g.loudest > best.loudest ? g : best)).newest;
}
