// The rider's wallet: enrol with the operator's code, renew the credential
// when there is network, pay offline by sound or QR code, read the
// statement. Protocol in ./sonotap/ (docs/protocol.md, docs/accounts.md),
// state in ./store.js, QR drawing in ./qr.js.

import * as sonotap from "./sonotap/index.js";
import { drawQr, qrModules } from "./qr.js";
import { load, update } from "./store.js";

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
  bad_amount: "Enter the amount to pay.",
  counter_used_up: "This phone has made all the payments one wallet key may make: please contact the operator.",
  insecure: "This page must be opened over a secure (https) connection.",
  no_sound: "This phone did not let the page play sound: tap Pay by sound again, or pay by QR code.",
  keys_changed: "Another window of this wallet changed it meanwhile: tap Renew again.",
  no_microphone: "This phone did not let the page listen. Allow the microphone to pay at gates that ask for it.",
  slow_microphone: "This phone's microphone records too few samples a second to hear the gate.",
};

let state;
let hubOffsetMs = 0;
let lastToken = null;

/** How long the page listens after a tap on Listen (or being shown). */
const LISTEN_MS = 120_000;

function say(text, error = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("error", error);
  box.hidden = !text;
}

/** An amount in minor units of currency `code`, as people read it: its
 * letters and decimals where the currency is known (a yen has none), else
 * a count of minor units. */
function money(minor, code) {
  const known = sonotap.currency(code);
  if (!known) return `${minor} (minor units of currency ${code})`;
  const digits = { minimumFractionDigits: known.digits, maximumFractionDigits: known.digits };
  const format = new Intl.NumberFormat(undefined, { style: "currency", currency: known.letters, ...digits });
  return format.format(Number(minor) / 10 ** known.digits);
}

/** Decimals of the fare box: the pass's currency's (whole minor units
 * for a currency the page does not know). */
function fareDigits(credential) {
  return sonotap.currency(credential.currency)?.digits ?? 0;
}

function nowSeconds() {
  return Math.floor((Date.now() + hubOffsetMs) / 1000);
}

async function hubTime() {
  const started = Date.now();
  let hub;
  try {
    const response = await fetch(api("time"), { cache: "no-store" });
    hub = (await response.json()).unix_ms;
  } catch {
    throw Object.assign(new Error("offline"), { code: "offline" });
  }
  if (!Number.isFinite(hub)) throw Object.assign(new Error("time"), { code: "hub_unavailable" });
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
  return new Map(state.trusted);
}

async function enrol(code) {
  const normal = sonotap.normaliseEnrolCode(code);
  const request = await sonotap.walletRequest({ kind: "enrol", code: normal }, state.keys, await hubTime());
  const answer = await ask("enrol", request.bytes);
  // The issuer key the enrolment answer names (over the hub's TLS) is the
  // one a first credential must verify under (docs/accounts.md §3.3).
  const id = answer.issuer_key_id;
  const key = typeof answer.issuer_key === "string" ? sonotap.fromHex(answer.issuer_key) : null;
  const named = Number.isInteger(id) && id >= 0 && id <= 255 && key?.length === 32;
  state = await update((cur) => ({
    ...cur,
    enrolled: true,
    trusted: cur.trusted.length || !named ? cur.trusted : [[id, key]],
  }));
  history.replaceState(null, "", location.pathname);
  await renew();
}

async function renew() {
  const request = await sonotap.walletRequest({ kind: "renew" }, state.keys, await hubTime());
  const answer = await ask("renew", request.bytes);
  const renewed = sonotap.decodeRenewed(sonotap.fromHex(answer.renewed));
  let choice;
  // Checked against the keys stored now; if another tab changed them
  // while this one checked (signatures take a moment), checked again.
  for (let attempt = 0; ; attempt++) {
    const seen = (await load()) ?? state;
    const { keys, keySet } = await keysAfter(answer.key_set, seen);
    let issuer;
    try {
      issuer = await sonotap.checkRenewed(renewed, state.walletKey, keys);
    } catch (e) {
      throw Object.assign(e, { code: "bad_answer" });
    }
    const stale = (cur) =>
      (cur.keySetVersion ?? 0n) !== (seen.keySetVersion ?? 0n) || !sameKeys(cur.trusted, seen.trusted);
    try {
      // Built on the stored record, under the lock: a payment in another
      // tab or a moment ago keeps its counter (docs/protocol.md §3). An
      // answer older than the pass in use (a replayed one) is refused here,
      // and said as `bad_answer`.
      state = await update((cur) => {
        if (stale(cur)) throw Object.assign(new Error("keys changed"), { code: "keys_changed" });
        const current = cur.credential ? sonotap.decodeCredential(cur.credential) : null;
        choice = sonotap.credentialAfterRenewal(current, cur.total, renewed.credential);
        const install = choice === "offered";
        return {
          ...cur,
          // The hub's clock as last seen: payments offline are stamped with it.
          hubOffsetMs,
          credential: install ? renewed.credential.bytes : cur.credential,
          // A fresh credential starts a fresh running total (§3).
          total: install ? 0 : cur.total,
          counter: Math.max(cur.counter, renewed.note.highestCounter),
          ...(keySet
            ? { trusted: [...keys], keySetVersion: keySet.version }
            : { trusted: cur.trusted.length ? cur.trusted : [[issuer.keyId, issuer.key]] }),
        };
      });
      break;
    } catch (e) {
      if (e.code !== "keys_changed" || attempt >= 2) throw e;
    }
  }
  say(
    {
      same: "Your pass is up to date.",
      current: "You have more left on your current pass than a new one would give: it stays in use.",
      offered: "Your pass is renewed.",
    }[choice],
  );
}

function sameKeys(a, b) {
  return a.length === b.length && a.every(([id, key], i) => id === b[i][0] && sonotap.equal(key, b[i][1]));
}

/** The keys to check a renewal answer against, from the stored record
 * `seen` and the answer's key set (hex): the set's keys (`keySet`, with its
 * version) when the phone adopts it (docs/accounts.md §3.3), else its own.
 * A set it cannot read is a `bad_answer`. */
async function keysAfter(hexSet, seen) {
  const own = new Map(seen.trusted);
  if (typeof hexSet !== "string") return { keys: own, keySet: null };
  let set;
  try {
    set = sonotap.decodeKeySet(sonotap.fromHex(hexSet));
  } catch (e) {
    throw Object.assign(e, { code: "bad_answer" });
  }
  const adopted = await sonotap.adoptKeySet(set, seen.keySetVersion ?? 0n, own);
  return adopted ? { keys: adopted, keySet: set } : { keys: own, keySet: null };
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

/** Signs the next token, after its counter and running total are on
 * disk: both are taken from the stored record under the lock, so no other
 * tab or action can have used them. */
async function nextToken() {
  const digits = state.credential ? fareDigits(sonotap.decodeCredential(state.credential)) : 0;
  const amount = Math.round(Number($("fare").value) * 10 ** digits);
  if (!(amount >= 1)) throw Object.assign(new Error("amount"), { code: "bad_amount" });
  const fare = $("fare").value;
  // Bound to the gate heard, stamped in its time (docs/protocol.md §3a);
  // else a version-1 token on the hub's clock as last seen.
  const gate = gateHeard();
  const binding = gate && (await sonotap.gateBinding(gate.beacon.readerTag, gate.beacon.challenge));
  const timestamp = gate ? gate.beacon.readerTime + Math.floor(gate.ageMs / 1000) : nowSeconds();
  let terms;
  let credential;
  state = await update((cur) => {
    if (!cur.credential) throw Object.assign(new Error("no credential"), { code: "no_credential" });
    if (cur.counter >= 0xffffffff) throw Object.assign(new Error("counter"), { code: "counter_used_up" });
    terms = { amount, counter: cur.counter + 1, totalBefore: cur.total, timestamp };
    credential = sonotap.decodeCredential(cur.credential);
    sonotap.checkPayment(credential, terms);
    return { ...cur, counter: terms.counter, total: cur.total + amount, fare };
  });
  // (What is left on the pass is shown once the action ends: `action`.)
  const token = gate
    ? await sonotap.signTokenV2(credential, terms, binding, state.keys.privateKey)
    : await sonotap.signTokenV1(credential, terms, 0, state.keys.privateKey);
  // The last token signed, for the end-to-end tests (wallet-web/README.md).
  globalThis.sonotapLastToken = sonotap.hex(token);
  return { token, gate };
}

// ---- the gate's beacon (docs/protocol.md §3a, docs/modem.md §7) ----

/** Beacons heard since the page was last shown: `{ beacon, at, wall,
 * levelDbfs }`, `at` on the page's monotonic clock and `wall` on the
 * phone's (a phone asleep may stop the first; the older of the two counts). */
let heard = [];
/** The microphone while listening: `{ context, stop }`. */
let listening = null;
/** Bumped by every start and stop: a start that finds it moved on (a
 * second tap, the page hidden, Stop) while it waited gives the microphone
 * back at once. */
let listenTurn = 0;
let starting = false;
/** The page was shown again while a start was under way. */
let relisten = false;
/** Refreshes what the page says once the last gate heard binds no more. */
let bindingEnds;

const tagText = (tag) => tag.toString(16).padStart(8, "0");

/** The gate to bind to now (`sonotap.chooseGate`), with its age. */
function gateHeard() {
  const now = { at: performance.now(), wall: Date.now() };
  const aged = heard.map((h) => ({ ...h, ageMs: Math.max(now.at - h.at, now.wall - h.wall, 0) }));
  return sonotap.chooseGate(aged);
}

function showGate() {
  const gate = gateHeard();
  const waiting = listening && listening.context.state !== "running";
  $("gate").textContent = gate
    ? `Paying gate ${tagText(gate.beacon.readerTag)}`
    : waiting
      ? "Tap the screen to start listening for the gate"
      : listening
        ? "Listening for the gate…"
        : "Any reader (no gate heard)";
  $("listen").textContent = listening || starting ? "Stop listening" : "Listen for the gate";
  // For the end-to-end test (wallet-web/README.md).
  globalThis.sonotapGate = gate ? tagText(gate.beacon.readerTag) : null;
}

function stopListening() {
  listenTurn++;
  listening?.stop();
  listening = null;
  showGate();
}

/** Listens for gates' beacons on the microphone, unprocessed (a phone's
 * echo cancelling and noise suppression take a steady 19 kHz tone for
 * noise), for `LISTEN_MS`; at most one microphone at a time, and none
 * while the page is hidden. */
async function listen() {
  if (listening || starting || document.hidden) return;
  const turn = ++listenTurn;
  const current = () => turn === listenTurn && !document.hidden;
  starting = true;
  showGate();
  let stream;
  let context;
  let tap;
  let timer;
  // A tap (click or key) lets a context started without one run: a touch
  // `pointerdown` does not count as one.
  const wake = () => context?.resume().catch(() => undefined);
  const stop = () => {
    clearTimeout(timer);
    for (const kind of ["click", "keydown"]) document.removeEventListener(kind, wake);
    // Chunks already queued are dropped: nothing is heard after a stop.
    if (tap) {
      tap.port.onmessage = null;
      tap.port.close();
    }
    for (const track of stream?.getTracks() ?? []) track.stop();
    context?.close().catch(() => undefined);
  };
  try {
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
      });
    } catch {
      throw Object.assign(new Error("microphone"), { code: "no_microphone" });
    }
    if (!current()) return stop();
    // The microphone's own rate: a browser resamples a 16 kHz headset up
    // to the context's rate, with nothing above 8 kHz in it.
    const micRate = stream.getAudioTracks()[0]?.getSettings?.().sampleRate;
    if (micRate && micRate < sonotap.BEACON_MIN_RATE) throw Object.assign(new Error("rate"), { code: "slow_microphone" });
    context = new AudioContext({ latencyHint: "playback" });
    let decoder;
    try {
      decoder = new sonotap.BeaconDecoder(context.sampleRate);
    } catch {
      throw Object.assign(new Error("rate"), { code: "slow_microphone" });
    }
    await context.audioWorklet.addModule("listen.js");
    if (!current()) return stop();
    tap = new AudioWorkletNode(context, "sonotap-listen");
    const seen = { rate: context.sampleRate, chunks: 0 };
    tap.port.onmessage = (event) => {
      if (listening?.context !== context) return;
      seen.chunks++;
      for (const reception of decoder.push(event.data)) heardBeacon(reception);
    };
    context.createMediaStreamSource(stream).connect(tap).connect(context.destination);
    context.onstatechange = () => {
      if (context.state === "running") for (const kind of ["click", "keydown"]) document.removeEventListener(kind, wake);
      showGate();
    };
    timer = setTimeout(stopListening, LISTEN_MS);
    listening = { context, stop };
    // For the end-to-end test: what the microphone has delivered.
    globalThis.sonotapListening = Object.assign(seen, { context });
    // Started without a tap (the page shown again), the context may wait
    // for one: a tap anywhere starts it.
    for (const kind of ["click", "keydown"]) document.addEventListener(kind, wake);
    wake();
  } catch (e) {
    stop();
    // A start the rider or the page called off says nothing.
    if (current()) throw e;
  } finally {
    starting = false;
    showGate();
    // Shown again while this start was being called off: listen anew.
    if (relisten && !listening && !document.hidden) {
      relisten = false;
      listen().catch(() => undefined);
    }
  }
}

function heardBeacon(reception) {
  let beacon;
  try {
    beacon = sonotap.decodeBeacon(reception.payload);
  } catch {
    return; // Some other bytes on the beacon's band: not a gate.
  }
  heard = [...heard.slice(-15), { beacon, at: performance.now(), wall: Date.now(), levelDbfs: reception.levelDbfs }];
  clearTimeout(bindingEnds);
  bindingEnds = setTimeout(showGate, sonotap.GATE_BINDS_MS + 100);
  showGate();
  // This phone pays at gates that beacon: it listens by itself from now
  // on whenever it is shown, until the rider taps Stop.
  if (!state.listens) {
    update((cur) => ({ ...cur, listens: true }))
      .then((saved) => (state = saved))
      .catch(() => undefined);
  }
}

let audio;
/** The audio output, made and resumed at the tap (a browser lets a page
 * start sound only then); refused in words if it will not run. */
function audioAtTap() {
  audio ??= new AudioContext();
  const resumed = audio.resume();
  return Promise.race([
    resumed.then(() => audio),
    new Promise((_, reject) =>
      setTimeout(() => reject(Object.assign(new Error("sound"), { code: "no_sound" })), 2000),
    ),
  ]);
}

async function play(token, profile, output) {
  const audio = await output;
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
  wakeLock?.release().catch(() => undefined);
  if (document.fullscreenElement) document.exitFullscreen().catch(() => undefined);
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
  const digits = fareDigits(c);
  $("fare").min = $("fare").step = (10 ** -digits).toFixed(digits);
  if (!$("fare").value) $("fare").value = state.fare ?? (c.perPaymentCap / 10 ** digits).toFixed(digits);
  showGate();
}

/** Says in plain words why an action failed. */
function sayWhy(e) {
  const code = e instanceof sonotap.Refused ? e.reason : e.code;
  const typed = e instanceof sonotap.Malformed && e.message.startsWith("enrolment code");
  const unsound = e instanceof sonotap.Malformed || e instanceof sonotap.NotInstalled;
  const text = typed ? e.message : unsound ? SAYS.bad_answer : undefined;
  say(SAYS[code] ?? text ?? `Something went wrong: ${e.message}`, true);
}

const ACTIONS = ["enrol-button", "renew", "show-statement", "pay-sound", "pay-robust", "pay-qr"];

/** Runs a user's action, one at a time (every action button waits),
 * saying what went wrong in plain words. What it changes it reads from the
 * store under the lock (`update`), so another tab's changes count; `run`
 * gets what must start at the tap itself and the tap's time. */
function action(button, run) {
  button.addEventListener("click", (event) => {
    event.preventDefault();
    const clicked = performance.now();
    const atTap = button.id.startsWith("pay-") && button.id !== "pay-qr" ? audioAtTap() : null;
    atTap?.catch(() => undefined);
    const enabled = ACTIONS.map((id) => [id, $(id).disabled]);
    for (const id of ACTIONS) $(id).disabled = true;
    say("");
    run(atTap, clicked)
      .catch(sayWhy)
      .finally(() => {
        for (const [id, was] of enabled) $(id).disabled = was;
        $("pay-robust").disabled = !lastToken;
        try {
          render();
        } catch (e) {
          say(`Something went wrong: ${e.message}`, true);
        }
      });
  });
}

async function start() {
  if (!globalThis.isSecureContext || !globalThis.crypto?.subtle) {
    say(SAYS.insecure, true);
    return;
  }
  // Ask the browser not to clear the wallet's storage when space is short.
  navigator.storage?.persist?.().catch(() => undefined);
  state = await load();
  if (!state) {
    const keys = await sonotap.generateKey();
    const fresh = { keys, walletKey: await sonotap.publicBytes(keys.publicKey), trusted: [], credential: null, total: 0, counter: 0, enrolled: false };
    // Another tab may have made the wallet meanwhile: its keys stay.
    state = await update((cur) => cur ?? fresh);
  }
  hubOffsetMs = state.hubOffsetMs ?? 0;
  const code = new URLSearchParams(location.hash.slice(1)).get("enrol");
  if (code) $("code").value = code;
  action($("enrol-button"), () => enrol($("code").value));
  action($("renew"), renew);
  action($("show-statement"), statement);
  action($("pay-sound"), async (output, tapped) => {
    const { token, gate } = await nextToken();
    lastToken = token;
    await play(lastToken, "fast", output);
    timings.sound.push(performance.now() - tapped);
    say(gate ? `Hold your phone to gate ${tagText(gate.beacon.readerTag)}.` : "Hold your phone to the reader.");
  });
  action($("pay-robust"), async (output) => {
    if (lastToken) await play(lastToken, "robust", output);
  });
  action($("pay-qr"), async (_, tapped) => {
    const { token } = await nextToken();
    await showQr(token, () => timings.qr.push(performance.now() - tapped));
  });
  $("listen").addEventListener("click", () => {
    say("");
    if (!listening && !starting) {
      listen().catch(sayWhy);
      return;
    }
    stopListening();
    // The rider said stop: no listening by itself either (written after
    // any write that turned it on, which the lock puts first).
    update((cur) => ({ ...cur, listens: false }))
      .then((saved) => (state = saved))
      .catch(() => undefined);
  });
  $("qr-done").addEventListener("click", hideQr);
  // Back from another tab or app: show what the store holds now.
  // Hidden, the page stops listening; shown again, a wallet that has heard
  // gates before listens again.
  document.addEventListener("visibilitychange", async () => {
    if (document.visibilityState !== "visible") {
      // What was heard before is no longer where the phone is.
      heard = [];
      stopListening();
      return;
    }
    state = (await load().catch(() => undefined)) ?? state;
    render();
    if (!state.listens || !state.enrolled) return;
    if (starting) relisten = true;
    else listen().catch(() => undefined);
  });
  render();
  if (state.listens && state.enrolled) listen().catch(() => undefined);
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("sw.js").catch(() => undefined);
}

start().catch((e) => say(`The wallet could not start: ${e.message}`, true));
