// The JS beacon decoder (sonotap/beacon.js) against the Rust encoder and
// decoder: docs/modem.md §7's vector and the recorded one, beacons that
// `sonotap modem beacon encode` renders at 48 and 44.1 kHz for 1 to 32
// bytes, repeated in noise and fed as a browser's audio thread delivers
// it (128 samples at a time); nothing heard in payments, noise or
// nonsense, and the audio kept stays bounded.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import {
  BEACON_BUFFER_SECONDS,
  BeaconDecoder,
  chooseGate,
  Malformed,
  decodeBeacon,
  encodeFast,
  encodeRobust,
  fromHex,
  hex,
  resample,
} from "../sonotap/index.js";
import { ROOT, sonotap } from "./vectors.js";
import { readWav } from "./wav.js";

const asFloat = ({ rate, samples }) => ({ rate, samples: Float32Array.from(samples, (v) => v / 32768) });

/** Everything a fresh decoder hears in `samples`, fed `chunk` at a time. */
function hear(samples, rate, chunk = 128) {
  const d = new BeaconDecoder(rate);
  const out = [];
  for (let i = 0; i < samples.length; i += chunk) out.push(...d.push(samples.subarray(i, i + chunk)));
  out.push(...d.finish());
  return out;
}

/** Seeded uniform noise of RMS `level` (a test that fails, fails again). */
function noise(length, level, seed) {
  let x = seed >>> 0 || 1;
  const out = new Float32Array(length);
  const scale = level * Math.sqrt(3);
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (((x >>> 0) / 0x100000000) * 2 - 1) * scale;
  }
  return out;
}

test("the documents' beacons are heard where the Rust decoder hears them", () => {
  for (const name of ["beacon-48k", "beacon-station-3db-rt60-0.8s-44k1-300ppm"]) {
    const path = `${ROOT}signals/modem/${name}.wav`;
    const { rate, samples } = asFloat(readWav(path));
    const rust = JSON.parse(execFileSync(sonotap(), ["modem", "beacon", "decode", "--json", path], { encoding: "utf8" }));
    const heard = hear(samples, rate);
    assert.equal(heard.length, 1, name);
    assert.equal(hex(heard[0].payload), readFileSync(`${ROOT}signals/modem/${name}.hex`, "utf8").trim());
    assert.equal(hex(heard[0].payload), rust.payload_hex);
    assert.ok(Math.abs(heard[0].start - rust.start_s * 48000) <= 2, `${name}: start ${heard[0].start}`);
    assert.ok(Math.abs(heard[0].levelDbfs - rust.level_dbfs) <= 1.5, `${name}: ${heard[0].levelDbfs} dBFS`);
  }
});

test("beacons the Rust encoder renders are heard, every repetition once, 1 to 32 bytes at 48, 44.1 and an odd 47.999 kHz", () => {
  const dir = mkdtempSync(join(tmpdir(), "sonotap-js-beacon-"));
  try {
    for (const rate of [48000, 44100, 47999]) {
      for (const len of [1, 17, 32]) {
        const payload = Uint8Array.from({ length: len }, (_, i) => (i * 61 + len + rate) & 255);
        const file = join(dir, `b-${rate}-${len}.wav`);
        execFileSync(sonotap(), ["modem", "beacon", "encode", "--hex", hex(payload), "--rate", String(rate), "--out", file]);
        const { samples: frame } = asFloat(readWav(file));
        // Three repetitions 1.5 s apart at a tenth of full scale, in noise
        // 20 dB under the beacon's level.
        const gap = Math.round(1.5 * rate);
        const lead = Math.round(rate / 4);
        const stream = noise(gap * 3 + frame.length, 0.1 * 0.8 * 0.1, rate + len);
        for (let r = 0; r < 3; r++) frame.forEach((v, i) => (stream[r * gap + lead + i] += 0.1 * v));
        const heard = hear(stream, rate);
        assert.deepEqual(
          heard.map((b) => hex(b.payload)),
          [hex(payload), hex(payload), hex(payload)],
          `${len} bytes at ${rate} Hz`,
        );
        const starts = heard.map((b) => b.start);
        for (let r = 0; r < 3; r++) {
          const expected = ((r * gap + lead) * 48000) / rate;
          assert.ok(Math.abs(starts[r] - expected) <= 3, `repetition ${r} at ${starts[r]}, not ${expected}`);
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a beacon's bytes: the gate's tag, its challenge and its time; anything else is refused", () => {
  const b = decodeBeacon(fromHex("b1d2e16d2660616263646566676b49e006"));
  assert.deepEqual([b.readerTag, hex(b.challenge), b.readerTime], [0xd2e16d26, "6061626364656667", 0x6b49e006]);
  for (const bad of ["b1d2e16d2660616263646566676b49e0", "b1d2e16d2660616263646566676b49e00600", "01d2e16d2660616263646566676b49e006", ""]) {
    assert.throws(() => decodeBeacon(fromHex(bad)), Malformed, bad);
  }
});

test("payments, noise and nonsense are no beacon, and the audio kept stays bounded", () => {
  const token = Uint8Array.from({ length: 200 }, (_, i) => i);
  for (const rate of [48000, 44100]) {
    const d = new BeaconDecoder(rate);
    let most = 0;
    const feed = (samples) => {
      for (let i = 0; i < samples.length; i += 4096) {
        assert.deepEqual(d.push(samples.subarray(i, i + 4096)), []);
        most = Math.max(most, d.buffered);
      }
    };
    for (const frame of [encodeFast(token), encodeRobust(token)]) feed(Float32Array.from(resample(frame, rate)));
    feed(noise(20 * rate, 0.3, 7));
    const odd = new Float32Array(rate);
    odd.forEach((_, i) => (odd[i] = [NaN, Infinity, -Infinity, 1e30, -1e30][i % 5]));
    feed(odd);
    feed(new Float32Array(3 * rate));
    assert.deepEqual(d.finish(), []);
    // Three seconds, a correlation block and a symbol at most.
    assert.ok(most <= BEACON_BUFFER_SECONDS * 48000 + 16384 + 2304 + 64, `${most} samples kept`);
  }
  assert.throws(() => new BeaconDecoder(32000), RangeError);
  assert.throws(() => new BeaconDecoder(Number.NaN), RangeError);
});

test("a wallet binds to the nearest gate's newest challenge, and to nothing heard too long ago", () => {
  const beacon = (readerTag, c) => ({ readerTag, challenge: Uint8Array.of(c, 0, 0, 0, 0, 0, 0, 0), readerTime: 1000 });
  const heard = (tag, c, ageMs, levelDbfs) => ({ beacon: beacon(tag, c), ageMs, levelDbfs });
  // Gate 1 is nearer (louder); its newest challenge is 2, heard quieter
  // than its older one: the challenge is the newest, the gate the loudest.
  const round = [heard(1, 1, 2500, -20), heard(2, 9, 1800, -30), heard(1, 2, 400, -24)];
  const chosen = chooseGate(round);
  assert.equal(chosen.beacon.readerTag, 1);
  assert.equal(chosen.beacon.challenge[0], 2);
  // One faint reception of the nearer gate does not hand the binding to
  // the farther one.
  const faded = [heard(1, 2, 1900, -20), heard(2, 9, 1500, -30), heard(1, 2, 300, -36)];
  assert.equal(chooseGate(faded).beacon.readerTag, 1);
  // A gate heard in an earlier round (beyond 3 s of the newest) is gone.
  assert.equal(chooseGate([heard(2, 9, 5000, -10), heard(1, 2, 1000, -30)]).beacon.readerTag, 1);
  // Nothing within 15 s: no gate, the token is a version-1 one.
  assert.equal(chooseGate([heard(1, 2, 15_001, -20)]), null);
  assert.equal(chooseGate([]), null);
  assert.equal(chooseGate([heard(1, 2, 15_000, -20)]).beacon.readerTag, 1);
});
