// The JS modem encoder against the Rust one: the documents' vectors sample
// by sample, its tables against docs/modem.md's, and its frames decoded by
// the real `sonotap modem decode` for both profiles at 48 and 44.1 kHz and
// several payload lengths.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import {
  LDPC_RATE_HALF,
  LDPC_RATE_TWO_THIRDS,
  encodeFast,
  encodeRobust,
  fromHex,
  hex,
  resample,
} from "../sonotap/index.js";
import { ROOT, sonotap } from "./vectors.js";
import { readWav, wav } from "./wav.js";

const FULL_SCALE = 32767;

function worstLsb(ours, theirs) {
  let worst = 0;
  for (let i = 0; i < Math.min(ours.length, theirs.length); i++) {
    worst = Math.max(worst, Math.abs(FULL_SCALE * ours[i] - theirs[i]));
  }
  return worst;
}

const payloadOf = (name) => fromHex(readFileSync(`${ROOT}signals/modem/${name}.hex`, "utf8").split(/\s+/)[0]);

test("the LDPC tables are docs/modem.md's", () => {
  const doc = readFileSync(`${ROOT}docs/modem.md`, "utf8");
  const table = (from, to) => {
    const section = doc.slice(doc.indexOf(from), doc.indexOf(to));
    const block = section.split("```")[1];
    return block.trim().split("\n").map((line) => line.trim().split(/\s+/).map(Number));
  };
  assert.deepEqual(table("## 3b.", "## 3c."), LDPC_RATE_HALF);
  assert.deepEqual(table("## 3c.", "## 4."), LDPC_RATE_TWO_THIRDS);
});

for (const [profile, encode, name] of [
  ["fast", encodeFast, "token-fast-48k"],
  ["robust", encodeRobust, "token-robust-48k"],
]) {
  test(`the ${profile} frame is the Rust encoder's vector to 2 LSB`, () => {
    const ours = encode(payloadOf(name));
    const theirs = readWav(`${ROOT}signals/modem/${name}.wav`);
    assert.equal(theirs.rate, 48000);
    assert.equal(ours.length, theirs.samples.length);
    const worst = worstLsb(ours, theirs.samples);
    assert.ok(worst <= 2, `${profile}: ${worst.toFixed(2)} LSB apart`);
  });
}

test("resampled to 44.1 kHz, the robust frame is the Rust encoder's vector to 2 LSB", () => {
  const ours = resample(encodeRobust(payloadOf("token-robust-44k1")), 44100);
  const theirs = readWav(`${ROOT}signals/modem/token-robust-44k1.wav`);
  assert.equal(theirs.rate, 44100);
  assert.equal(ours.length, theirs.samples.length);
  const worst = worstLsb(ours, theirs.samples);
  assert.ok(worst <= 2, `${worst.toFixed(2)} LSB apart`);
});

test("`sonotap modem decode` reads the JS frames: both profiles, 48 and 44.1 kHz, 1 to 256 bytes", () => {
  const dir = mkdtempSync(join(tmpdir(), "sonotap-js-modem-"));
  try {
    for (const [profile, encode] of [["fast", encodeFast], ["robust", encodeRobust]]) {
      for (const rate of [48000, 44100]) {
        for (const length of [1, 37, 200, 256]) {
          const payload = Uint8Array.from({ length }, (_, i) => (i * 73 + length + rate) & 0xff);
          const file = join(dir, `${profile}-${rate}-${length}.wav`);
          writeFileSync(file, wav(resample(encode(payload), rate), rate));
          const out = execFileSync(sonotap(), ["modem", "decode", "--json", file], { encoding: "utf8" });
          const lines = out.trim().split("\n").map((l) => JSON.parse(l));
          assert.equal(lines.length, 1, `${profile} ${rate} Hz ${length} bytes: ${out}`);
          assert.equal(lines[0].payload_hex, hex(payload), `${profile} ${rate} Hz ${length} bytes`);
          assert.equal(lines[0].profile, profile);
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
