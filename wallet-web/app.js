// The rider's wallet: enrol with the operator's code, renew the credential
// when there is network, pay offline by sound or QR code, read the
// statement. Protocol in ./sonotap/ (docs/protocol.md, docs/accounts.md),
// state in ./store.js, QR drawing in ./qr.js.

import * as sonotap from "./sonotap/index.js";
import { drawQr, qrModules } from "./qr.js";
import { load, save } from "./store.js";

const api = (path) => new URL(`../v1/${path}`, location.href);
const $ = (id) => document.getElementById(id);

/** Plain words for every refusal the wallet can foresee. */
const SAYS = {
  credential_expired: "Your pass has expired. Connect to the internet and tap Renew.",
  credential_not_yet_valid: "Your pass is not valid yet. Check your phone's date and time.",
  over_offline_limit: "You have used this pass's offline allowance. Connect and tap Renew.",
  over_payment_cap: "That amount is more than one payment may be.",
  no_credential: "No pass yet: connect to the internet and tap Renew.",
  offline: "No network. Renewing needs a connection; you can still pay with the pass you have.",
  no_allowance: "Nothing left to renew with: top up your account, or wait for older passes to settle.",
  account_suspended: "Your account is suspended. Please contact the operator.",
  account_closed: "Your account is closed. Please contact the operator.",
  wallet_denied: "This phone is blocked. Please contact the operator.",
  not_enrolled: "This phone is not in an account yet: enter your operator's code.",
  enrolled_elsewhere: "This phone already belongs to another account.",
  too_many_wallets: "Your account has as many phones as it may have.",
  code_not_valid: "That code is not valid: it may be mistyped, used or expired.",
  rate_limited: "Too many tries. Please wait a minute and try again.",
  not_authenticated: "The hub did not accept this phone's request. Check the phone's clock and try again.",
  hub_unavailable: "The service is busy. Please try again in a moment.",
  bad_answer: "The hub's answer did not check out; nothing was changed.",
  bad_amount: "Enter the amount to pay: at least 0.01.",
};

let state;
let hubOffsetMs = 0;
let lastToken = null;

function say(text, error = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("error", error);
  box.hidden = !text;
}

function money(minor, currency) {
  const value = Number(minor) / 100;
  try {
    const code = { 978: "EUR", 840: "USD", 826: "GBP", 756: "CHF" }[currency];
    if (code) return new Intl.NumberFormat(undefined, { style: "currency", currency: code }).format(value);
  } catch {
    // An unknown currency: the plain number below.
  }
  return value.toFixed(2);
}

function nowSeconds() {
  return Math.floor((Date.now() + hubOffsetMs) / 1000);
}

async function hubTime() {
  const started = Date.now();
  const response = await fetch(api("time"), { cache: "no-store" });
  const { unix_ms: hub } = await response.json();
  hubOffsetMs = hub - Math.round((started + Date.now()) / 2);
  return Date.now() + hubOffsetMs;
}

/** POSTs a signed request; the JSON answer, or throws an Error whose
 * `code` is the hub's (or `offline`). */
async function ask(kind, body) {
  let response;
  try {
    response = await fetch(api(`wallet/${kind}`), {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body,
      cache: "no-store",
    });
  } catch {
    throw Object.assign(new Error("offline"), { code: "offline" });
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(answer.message ?? response.statusText), { code: answer.error });
  return answer;
}

function trusted() {
  return new Map(state.trusted.map(([id, key]) => [id, key]));
}

async function enrol(code) {
  const normal = sonotap.normaliseEnrolCode(code);
  const request = await sonotap.walletRequest({ kind: "enrol", code: normal }, state.keys, await hubTime());
  const answer = await ask("enrol", request.bytes);
  if (state.trusted.length === 0 && answer.issuer_key) {
    state.trusted = [[answer.issuer_key_id, sonotap.fromHex(answer.issuer_key)]];
  }
  state.enrolled = true;
  await save(state);
  history.replaceState(null, "", location.pathname);
  await renew();
}

async function renew() {
  const request = await sonotap.walletRequest({ kind: "renew" }, state.keys, await hubTime());
  const answer = await ask("renew", request.bytes);
  const renewed = sonotap.decodeRenewed(sonotap.fromHex(answer.renewed));
  let issuer;
  try {
    issuer = await sonotap.checkRenewed(renewed, state.walletKey, trusted());
  } catch (e) {
    throw Object.assign(e, { code: "bad_answer" });
  }
  const same = state.credential && sonotap.equal(state.credential, renewed.credential.bytes);
  const next = {
    ...state,
    // The hub's clock as last seen: payments offline are stamped with it.
    hubOffsetMs,
    credential: renewed.credential.bytes,
    // A fresh credential starts a fresh running total (docs/protocol.md §3).
    total: same ? state.total : 0,
    counter: Math.max(state.counter, renewed.note.highestCounter),
    trusted: state.trusted.length ? state.trusted : [[issuer.keyId, issuer.key]],
  };
  await save(next);
  state = next;
  say(same ? "Your pass is up to date." : "Your pass is renewed.");
}

async function statement() {
  const request = await sonotap.walletRequest({ kind: "statement", before: 0 }, state.keys, await hubTime());
  const answer = await ask("statement", request.bytes);
  const s = sonotap.decodeStatement(sonotap.fromHex(answer.statement));
  if (!(await sonotap.statementChecks(s, request.nonce, state.walletKey, trusted()))) {
    throw Object.assign(new Error("statement"), { code: "bad_answer" });
  }
  $("balance").textContent = money(s.balance, s.currency);
  const list = $("entries");
  list.replaceChildren(
    ...s.entries.map((e) => {
      const li = document.createElement("li");
      const what = { top_up: "Top-up", charge: `Paid at ${e.source}`, void: `Refund at ${e.source}`, adjustment: "Adjustment" }[e.kind];
      const when = new Date(e.at * 1000).toLocaleString();
      li.innerHTML = "<span></span><span></span>";
      li.firstChild.textContent = `${what} · ${when}`;
      li.lastChild.textContent = money(e.amount, s.currency);
      li.dataset.kind = e.kind;
      return li;
    }),
  );
  $("statement").hidden = false;
  if (s.state !== "open") say(SAYS[`account_${s.state}`], true);
}

/** Signs the next token, after its counter and running total are on disk. */
async function nextToken() {
  if (!state.credential) throw Object.assign(new Error("no credential"), { code: "no_credential" });
  const credential = sonotap.decodeCredential(state.credential);
  const amount = Math.round(Number($("fare").value) * 100);
  if (!(amount >= 1)) throw Object.assign(new Error("amount"), { code: "bad_amount" });
  const terms = { amount, counter: state.counter + 1, totalBefore: state.total, timestamp: nowSeconds() };
  sonotap.checkPayment(credential, terms);
  const next = { ...state, counter: terms.counter, total: state.total + amount, fare: $("fare").value };
  await save(next);
  state = next;
  render();
  return sonotap.signTokenV1(credential, terms, 0, state.keys.privateKey);
}

let audio;
async function play(token, profile) {
  audio ??= new AudioContext();
  await audio.resume();
  const frame = profile === "robust" ? sonotap.encodeRobust(token) : sonotap.encodeFast(token);
  const samples = Float32Array.from(sonotap.resample(frame, audio.sampleRate));
  const buffer = audio.createBuffer(1, samples.length, audio.sampleRate);
  buffer.copyToChannel(samples, 0);
  const source = audio.createBufferSource();
  source.buffer = buffer;
  source.connect(audio.destination);
  source.start();
  // What the page played, for the end-to-end test (wallet-web/README.md).
  globalThis.sonotapLastSound = { rate: audio.sampleRate, samples };
}

/** How long the last tap took to its sound or code (ms), for the bench. */
const timings = (globalThis.sonotapTimings = { sound: [], qr: [] });

let wakeLock;
async function showQr(token, drawn) {
  drawQr($("qr"), qrModules(token));
  $("qr-screen").hidden = false;
  drawn();
  try {
    await document.documentElement.requestFullscreen?.();
  } catch {
    // Not allowed here: the code is shown all the same.
  }
  wakeLock = await navigator.wakeLock?.request("screen").catch(() => undefined);
}

function hideQr() {
  $("qr-screen").hidden = true;
  wakeLock?.release();
  if (document.fullscreenElement) document.exitFullscreen();
}

function render() {
  const enrolled = state.enrolled;
  $("enrol").hidden = enrolled;
  $("home").hidden = !enrolled;
  if (!enrolled) return;
  if (!state.credential) {
    $("left").textContent = "–";
    $("validity").textContent = "No pass yet";
    return;
  }
  const c = sonotap.decodeCredential(state.credential);
  $("left").textContent = money(c.offlineLimit - state.total, c.currency);
  $("validity").textContent = `Valid until ${new Date(c.validUntil * 1000).toLocaleString()}`;
  if (!$("fare").value) $("fare").value = state.fare ?? (c.perPaymentCap / 100).toFixed(2);
}

/** Runs a user's action, saying what went wrong in plain words. */
function action(button, run) {
  button.addEventListener("click", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      say("");
      await run();
    } catch (e) {
      const code = e instanceof sonotap.Refused ? e.reason : e.code;
      say(SAYS[code] ?? (e instanceof sonotap.Malformed ? e.message : `Something went wrong: ${e.message}`), true);
    } finally {
      button.disabled = false;
      render();
    }
  });
}

async function start() {
  state = await load();
  hubOffsetMs = state?.hubOffsetMs ?? 0;
  if (!state) {
    const keys = await sonotap.generateKey();
    state = { keys, walletKey: await sonotap.publicBytes(keys.publicKey), trusted: [], credential: null, total: 0, counter: 0, enrolled: false };
    await save(state);
  }
  const code = new URLSearchParams(location.hash.slice(1)).get("enrol");
  if (code) $("code").value = code;
  action($("enrol-button"), () => enrol($("code").value));
  action($("renew"), renew);
  action($("show-statement"), statement);
  action($("pay-sound"), async () => {
    const tapped = performance.now();
    lastToken = await nextToken();
    await play(lastToken, "fast");
    timings.sound.push(performance.now() - tapped);
    $("pay-robust").disabled = false;
    say("Hold your phone to the reader.");
  });
  action($("pay-robust"), async () => {
    if (lastToken) await play(lastToken, "robust");
  });
  action($("pay-qr"), async () => {
    const tapped = performance.now();
    await showQr(await nextToken(), () => timings.qr.push(performance.now() - tapped));
  });
  $("qr-done").addEventListener("click", hideQr);
  render();
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("sw.js").catch(() => undefined);
}

start().catch((e) => say(`The wallet could not start: ${e.message}`, true));
