// The web wallet's figures (benches/wallet_web.rs runs this): in headless
// Chromium, a first visit (enrolment and renewal) and a later one, with
// the bytes the page fetched each time; then TAPS payments by sound and by
// QR code, timed from the tap to the sound's start (the buffer handed to
// the audio output) and to the code drawn; every sound the page played is
// written to OUT_DIR/page-N.wav for the channel simulator; and what
// listening for a gate's beacon costs the page.
//
//   node bench.mjs PROFILE_DIR OUT_DIR URL TAPS

import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { wav } from "../wav.js";
import { launch } from "./chromium.js";

const [profile, outDir, url, taps] = process.argv.slice(2);
const browser = await launch(profile);
const page = await browser.newPage();
await page.setViewport({ width: 360, height: 640 });
const cdp = await page.createCDPSession();
await cdp.send("Network.enable");
let bytes = 0;
cdp.on("Network.loadingFinished", (e) => (bytes += e.encodedDataLength));

await page.goto(url, { waitUntil: "networkidle0" });
await page.click("#enrol-button");
await page.waitForFunction(() => !document.getElementById("home").hidden, { timeout: 30_000 });
await page.waitForFunction(() => navigator.serviceWorker?.controller, { timeout: 30_000 });
const firstVisit = bytes;
bytes = 0;
await page.reload({ waitUntil: "networkidle0" });
const laterVisit = bytes;

await page.$eval("#fare", (input) => (input.value = "0.01"));
for (let i = 0; i < Number(taps); i++) {
  await page.click("#pay-sound");
  await page.waitForFunction((n) => globalThis.sonotapTimings.sound.length > n, { timeout: 30_000 }, i);
  const sound = await page.evaluate(() => ({
    rate: globalThis.sonotapLastSound.rate,
    samples: Array.from(globalThis.sonotapLastSound.samples),
  }));
  writeFileSync(join(outDir, `page-${i}.wav`), wav(sound.samples, sound.rate));
  await page.click("#pay-qr");
  await page.waitForFunction((n) => globalThis.sonotapTimings.qr.length > n, { timeout: 30_000 }, i);
  await page.click("#qr-done");
}
const timings = await page.evaluate(() => globalThis.sonotapTimings);
// Listening for a gate: the page's beacon decoder on 20 s of noise at
// each rate a phone records at, the share of one core it took (the
// second of two runs: the first warms the JIT up).
const listening = await page.evaluate(async () => {
  const { BeaconDecoder } = await import("./sonotap/index.js");
  const out = {};
  for (const rate of [48000, 44100]) {
    const noise = new Float32Array(20 * rate);
    let x = 1;
    for (let i = 0; i < noise.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      noise[i] = ((x >>> 0) / 2 ** 32 - 0.5) * 0.1;
    }
    for (let run = 0; run < 2; run++) {
      const decoder = new BeaconDecoder(rate);
      const started = performance.now();
      for (let i = 0; i < noise.length; i += 2048) decoder.push(noise.subarray(i, i + 2048));
      out[rate] = (performance.now() - started) / 20_000;
    }
  }
  return out;
});
console.log(
  JSON.stringify({
    first_visit_bytes: firstVisit,
    later_visit_bytes: laterVisit,
    ...timings,
    listening_core_share: listening,
  }),
);
await browser.close();

