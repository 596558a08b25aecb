// A phone for the end-to-end test (tests/integration/wallet_web.rs): real
// headless Chromium, driven over the DevTools protocol by puppeteer-core,
// showing the wallet a real `hub serve` serves. One step per run; the
// browser profile (IndexedDB, the service worker's cache) lives in a
// directory kept between runs, as a phone keeps its storage.
//
//   node phone.mjs PROFILE_DIR SHOTS_DIR STEP URL [OUT] [HEARD.wav]
//
// STEP: enrol (URL carries #enrol=CODE) | pay-sound OUT.wav | pay-qr OUT.png
// | gate-qr OUT.png HEARD.wav (the microphone hears HEARD.wav: the page
// listens for the gate's beacon, then pays by QR code bound to it) |
// renew | statement | two-tabs (two tabs of the one wallet pay by QR code at the
// same moment; prints both tokens). Paying runs offline (network
// emulation), after a reload that the service worker must answer. Prints
// one JSON line of what the page showed; exits 1 with the page's message
// when it refused.

import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { wav } from "../wav.js";
import { launch } from "./chromium.js";

const [profile, shots, step, url, out, heard] = process.argv.slice(2);

const browser = await launch(profile, heard);
const timer = setTimeout(() => {
  console.error(`${step}: no end within 60 s`);
  process.exit(2);
}, 60_000);

// What the page said on its console (printed when a step fails).
const said = [];
try {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => said.push(`${m.type()}: ${m.text()}`));
  await page.setViewport({ width: 360, height: 640, deviceScaleFactor: 1 });
  await page.emulateMediaFeatures([{ name: "prefers-color-scheme", value: "dark" }]);
  await page.goto(url, { waitUntil: "networkidle0" });
  const shown = () =>
    page.evaluate(() => ({
      message: document.getElementById("message").textContent,
      error: document.getElementById("message").classList.contains("error"),
      left: document.getElementById("left").textContent,
    }));
  // Until the page shows `id` (or, for "sound", has played), or says why not.
  const settled = (id) =>
    page.waitForFunction(
      (what) =>
        (what === "sound" ? globalThis.sonotapLastSound : !document.getElementById(what).hidden) ||
        document.getElementById("message").classList.contains("error"),
      { timeout: 20_000 },
      id,
    );
  const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`) });
  let result;
  switch (step) {
    case "enrol": {
      await shot("enrol");
      await page.click("#enrol-button");
      await settled("home");
      result = await shown();
      await shot("home");
      break;
    }
    case "pay-sound":
    case "pay-qr":
    case "gate-qr": {
      // The reader is offline from here; the page must come from the cache.
      await page.waitForFunction(() => navigator.serviceWorker?.controller, { timeout: 20_000 });
      await page.setOfflineMode(true);
      await page.reload({ waitUntil: "load" });
      await page.waitForFunction(() => !document.getElementById("home").hidden, { timeout: 20_000 });
      if (step === "pay-sound") {
        await page.click("#pay-sound");
        await settled("sound");
        const sound = await page.evaluate(() => ({
          rate: globalThis.sonotapLastSound?.rate ?? 0,
          samples: Array.from(globalThis.sonotapLastSound?.samples ?? []),
        }));
        writeFileSync(out, wav(sound.samples, sound.rate));
        result = { ...(await shown()), rate: sound.rate, samples: sound.samples.length };
        await shot("pay-sound");
      } else {
        if (step === "gate-qr") {
          await page.click("#listen");
          // 60 s: with the whole test suite running, the page once heard a
          // fraction of real time (426 chunks in 20 s) and missed the
          // looped beacon; alone it hears it within seconds.
          await page
            .waitForFunction(
              () => globalThis.sonotapGate || document.getElementById("message").classList.contains("error"),
              { timeout: 60_000 },
            )
            .catch(async (e) => {
              const heard = await page.evaluate(() => ({
                gate: document.getElementById("gate").textContent,
                rate: globalThis.sonotapListening?.rate,
                chunks: globalThis.sonotapListening?.chunks,
                context: globalThis.sonotapListening?.context.state,
              }));
              throw new Error(`${e.message}; the page heard: ${JSON.stringify(heard)}`);
            });
          await shot("gate");
        }
        await page.click("#pay-qr");
        await page.waitForFunction(() => !document.getElementById("qr-screen").hidden, { timeout: 20_000 });
        await new Promise((r) => setTimeout(r, 300));
        await page.screenshot({ path: out });
        result = {
          ...(await shown()),
          gate: await page.evaluate(() => globalThis.sonotapGate),
          token: await page.evaluate(() => globalThis.sonotapLastToken),
        };
        await shot("pay-qr");
      }
      break;
    }
    case "two-tabs": {
      const other = await browser.newPage();
      await other.goto(url, { waitUntil: "networkidle0" });
      for (const tab of [page, other]) {
        await tab.waitForFunction(() => !document.getElementById("home").hidden, {
          timeout: 20_000,
          polling: 200,
        });
      }
      // DOM clicks: a tab in the background gets no input events.
      await Promise.all(
        [page, other].map((tab) => tab.evaluate(() => document.getElementById("pay-qr").click())),
      );
      const signed = (tab) =>
        tab
          .waitForFunction(() => globalThis.sonotapLastToken, { timeout: 20_000, polling: 200 })
          .then(() => tab.evaluate(() => globalThis.sonotapLastToken));
      result = { ...(await shown()), tokens: await Promise.all([signed(page), signed(other)]) };
      break;
    }
    case "renew": {
      await page.waitForFunction(() => !document.getElementById("home").hidden, { timeout: 20_000 });
      await page.click("#renew");
      await page.waitForFunction(() => document.getElementById("message").textContent, { timeout: 20_000 });
      result = await shown();
      break;
    }
    case "statement": {
      await page.click("#show-statement");
      await settled("statement");
      result = {
        ...(await shown()),
        balance: await page.evaluate(() => document.getElementById("balance").textContent),
        entries: await page.evaluate(() =>
          [...document.querySelectorAll("#entries li")].map((li) => li.dataset.kind),
        ),
      };
      await shot("statement");
      break;
    }
    default:
      throw new Error(`no step ${step}`);
  }
  result.problems = problems;
  console.log(JSON.stringify(result));
  clearTimeout(timer);
  await browser.close();
  process.exit(result.error || problems.length ? 1 : 0);
} catch (e) {
  console.error(`${step}: ${e.stack ?? e}\nthe page's console:\n${said.join("\n")}`);
  await browser.close();
  process.exit(2);
}

