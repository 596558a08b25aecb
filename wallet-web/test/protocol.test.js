// docs/protocol.md §7 and docs/accounts.md §3.5, rebuilt by the wallet's
// protocol module from the documents' fixed seeds: every value must come
// out exactly (Ed25519 is deterministic).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  Malformed,
  Refused,
  Writer,
  adoptKeySet,
  checkRenewed,
  credentialAfterRenewal,
  credentialDigest,
  currencies,
  decodeBeacon,
  decodeCredential,
  decodeKeySet,
  decodeRenewed,
  decodeStatement,
  encodeEnrolCode,
  fromHex,
  gateBinding,
  hex,
  keyFromSeed,
  normaliseEnrolCode,
  publicBytes,
  readerTag,
  sign,
  signTokenV1,
  signTokenV2,
  statementChecks,
  tag,
  walletId,
  walletRequest,
} from "../sonotap/index.js";
import { ROOT, vectors } from "./vectors.js";

const seed = (from) => Uint8Array.from({ length: 32 }, (_, i) => from + i);
const protocol = vectors("docs/protocol.md");
const accounts = vectors("docs/accounts.md");

test("keys, ids and tags of docs/protocol.md §7", async () => {
  const issuer = await keyFromSeed(seed(0x00));
  const wallet = await keyFromSeed(seed(0x20));
  assert.equal(hex(await publicBytes(issuer.publicKey)), protocol.issuer_public);
  const walletKey = await publicBytes(wallet.publicKey);
  assert.equal(hex(walletKey), protocol.wallet_public);
  assert.equal(hex(await walletId(walletKey)), protocol.wallet_id);
  assert.equal((await readerTag("gate-1")).toString(16).padStart(8, "0"), protocol.reader_tag_gate_1);
});

test("tokens of versions 1 and 2 of docs/protocol.md §7", async () => {
  const wallet = await keyFromSeed(seed(0x20));
  const credential = decodeCredential(fromHex(protocol.credential));
  assert.equal(hex(await credentialDigest(credential)), protocol.credential_digest);
  const tag = await readerTag("gate-1");
  const v1 = await signTokenV1(
    credential,
    { amount: 250, counter: 7, totalBefore: 1000, timestamp: 1800003600 },
    tag,
    wallet.privateKey,
  );
  assert.equal(hex(v1), protocol.token);
  const beacon = decodeBeacon(fromHex(protocol.beacon));
  assert.equal(beacon.readerTag, tag);
  assert.equal(beacon.readerTime, 1800003590);
  assert.equal(hex(beacon.challenge), "6061626364656667");
  const binding = await gateBinding(beacon.readerTag, beacon.challenge);
  assert.equal(hex(binding), protocol.gate_binding);
  const v2 = await signTokenV2(
    credential,
    { amount: 250, counter: 8, totalBefore: 1250, timestamp: 1800003595 },
    binding,
    wallet.privateKey,
  );
  assert.equal(hex(v2), protocol.token_v2);
});

test("the wallet refuses what a reader must decline, and signs nothing", async () => {
  const wallet = await keyFromSeed(seed(0x20));
  const credential = decodeCredential(fromHex(protocol.credential));
  const base = { amount: 250, counter: 9, totalBefore: 0, timestamp: 1800003600 };
  const cases = [
    [{ ...base, timestamp: 1799999999 }, "credential_not_yet_valid"],
    [{ ...base, timestamp: 1800000000 + 72 * 3600 }, "credential_expired"],
    [{ ...base, amount: 501 }, "over_payment_cap"],
    [{ ...base, totalBefore: 4800 }, "over_offline_limit"],
  ];
  for (const [terms, reason] of cases) {
    await assert.rejects(signTokenV1(credential, terms, 0, wallet.privateKey), (e) => {
      assert.ok(e instanceof Refused);
      assert.equal(e.reason, reason);
      return true;
    });
  }
});

test("credentials are decoded canonically", () => {
  const bytes = fromHex(protocol.credential);
  assert.throws(() => decodeCredential(bytes.subarray(0, 114)), Malformed);
  assert.throws(() => decodeCredential(Uint8Array.of(...bytes, 0)), Malformed);
  // Version 2, a reserved scope, currency 0, zero hours (each a u8 or a u16).
  for (const [offset, value] of [[0, 2], [2, 0x03], [3, 0], [49, 0]]) {
    const bad = Uint8Array.from(bytes);
    bad[offset] = value;
    if (offset === 3 || offset === 49) bad[offset + 1] = 0;
    assert.throws(() => decodeCredential(bad), Malformed, `byte ${offset} = ${value}`);
  }
});

test("enrolment codes of docs/accounts.md §3.1", () => {
  const random = fromHex(accounts.enrol_random);
  const code = encodeEnrolCode(random);
  assert.equal(hex(new TextEncoder().encode(code)), accounts.enrol_code_ascii);
  assert.equal(normaliseEnrolCode("ucq2-fi5e uwtk-pkfj"), code);
  assert.throws(() => normaliseEnrolCode("UCQ2-FI5E-UWTK-PKF0"), /'0'/);
  assert.throws(() => normaliseEnrolCode("UCQ2"), /4 characters/);
});

test("wallet requests of docs/accounts.md §3.5", async () => {
  const wallet = await keyFromSeed(seed(0x20));
  const nonce = fromHex(accounts.nonce);
  const at = 1800000000000;
  const code = encodeEnrolCode(fromHex(accounts.enrol_random));
  const asks = [
    [{ kind: "enrol", code }, accounts.enrol_request],
    [{ kind: "renew" }, accounts.renew_request],
    [{ kind: "statement", before: 0 }, accounts.statement_request],
  ];
  for (const [ask, expected] of asks) {
    const request = await walletRequest(ask, wallet, at, nonce);
    assert.equal(hex(request.bytes), expected, ask.kind);
  }
});

test("a renewal answer is checked before it is installed", async () => {
  const wallet = await keyFromSeed(seed(0x20));
  const own = await publicBytes(wallet.publicKey);
  const issuer = fromHex(protocol.issuer_public);
  const answer = decodeRenewed(fromHex(accounts.renewed));
  assert.equal(hex(answer.note.bytes), accounts.renewal_note);
  assert.equal(answer.note.highestCounter, 7);
  assert.deepEqual(await checkRenewed(answer, own, new Map()), { keyId: 1, key: issuer });
  assert.deepEqual(await checkRenewed(answer, own, new Map([[1, issuer]])), { keyId: 1, key: issuer });
  await assert.rejects(checkRenewed(answer, own, new Map([[1, new Uint8Array(32).fill(9)]])), /not one this phone trusts/);
  await assert.rejects(checkRenewed(answer, new Uint8Array(32), new Map()), /another wallet key/);
  const tampered = fromHex(accounts.renewed);
  const noteAt = 19 + 115;
  tampered[noteAt + 19 + 32 + 4 + 7] ^= 1; // the last byte of the note's hub time
  await assert.rejects(checkRenewed(decodeRenewed(tampered), own, new Map()), /note's signature/);
  assert.throws(() => decodeRenewed(Uint8Array.of(...fromHex(accounts.renewed), 0)), Malformed);
});

test("a statement of docs/accounts.md §3.5 decodes and checks", async () => {
  const wallet = await keyFromSeed(seed(0x20));
  const own = await publicBytes(wallet.publicKey);
  const trusted = new Map([[1, fromHex(protocol.issuer_public)]]);
  const nonce = fromHex(accounts.nonce);
  const s = decodeStatement(fromHex(accounts.statement));
  assert.equal(s.state, "open");
  assert.equal(s.balance, 2000n);
  assert.equal(s.exposure, 5000n);
  assert.deepEqual(
    s.entries.map((e) => [Number(e.id), e.kind, Number(e.amount), e.at, e.source, Number(e.seq)]),
    [
      [3, "void", 250, 1799996460, "gate-1", 42],
      [2, "charge", -250, 1799996400, "gate-1", 41],
      [1, "top_up", 2000, 1799900000, "TOPUP-0001", 0],
    ],
  );
  assert.ok(await statementChecks(s, nonce, own, trusted));
  assert.ok(!(await statementChecks(s, new Uint8Array(16), own, trusted)), "a replayed statement");
  assert.ok(!(await statementChecks(s, nonce, own, new Map())), "an untrusted key");
  assert.throws(() => decodeStatement(Uint8Array.of(...fromHex(accounts.statement), 0)), Malformed);
});

test("after a renewal the wallet keeps what leaves it more (docs/accounts.md §2)", () => {
  const base = fromHex(protocol.credential); // limit 5000, from 1800000000 for 72 h
  const variant = (limit, validFrom) => {
    const bytes = Uint8Array.from(base);
    new DataView(bytes.buffer).setUint32(37, limit);
    new DataView(bytes.buffer).setUint32(45, validFrom);
    return decodeCredential(bytes);
  };
  const current = decodeCredential(base);
  const later = 1800000000 + 3600;
  assert.equal(credentialAfterRenewal(null, 0, current), "offered", "a first credential");
  assert.equal(credentialAfterRenewal(current, 1000, decodeCredential(base)), "same");
  assert.equal(credentialAfterRenewal(current, 1000, variant(3000, later)), "current", "4000 left beats 3000");
  assert.equal(credentialAfterRenewal(current, 3000, variant(3000, later)), "offered", "2000 left does not");
  const nearEnd = 1800000000 + 72 * 3600 - 3000;
  assert.equal(credentialAfterRenewal(current, 1000, variant(3000, nearEnd)), "offered", "the current one ends within the hour");
  assert.throws(() => credentialAfterRenewal(current, 0, variant(5000, 1799990000)), /older than the one in use/);
});

/** docs/sync.md §3.4's key set: `keys` as [id, key pair], signed by the
 * pairs in `signers`. */
async function keySet(version, keys, signers) {
  const w = new Writer().raw(tag("sonotap/v1/keyset")).u64(version).u8(keys.length);
  for (const [id, pair] of keys) w.u8(id).raw(await publicBytes(pair.publicKey));
  const signed = w.bytes();
  const out = new Writer().raw(signed).u8(signers.length);
  for (const [id, pair] of signers) out.u8(id).raw(await sign(pair.privateKey, signed));
  return out.bytes();
}

test("a phone adopts a newer key set a key it trusts signed, as a reader does (docs/sync.md §3.4)", async () => {
  const one = await keyFromSeed(seed(0x40));
  const two = await keyFromSeed(seed(0x60));
  const [k1, k2] = [await publicBytes(one.publicKey), await publicBytes(two.publicKey)];
  const trusted = new Map([[1, k1]]);
  const rotated = decodeKeySet(await keySet(2, [[1, one], [2, two]], [[1, one]]));
  assert.equal(rotated.version, 2n);
  const adopted = await adoptKeySet(rotated, 1n, trusted);
  assert.deepEqual([...adopted.keys()], [1, 2]);
  assert.equal(hex(adopted.get(2)), hex(k2));
  // The same version changes nothing; an older one (a rollback) neither.
  assert.equal(await adoptKeySet(rotated, 2n, trusted), null);
  assert.equal(await adoptKeySet(rotated, 3n, trusted), null);
  // Signed only by the new key, or by nothing, or altered: not adopted.
  const unvouched = decodeKeySet(await keySet(2, [[1, one], [2, two]], [[2, two]]));
  assert.equal(await adoptKeySet(unvouched, 1n, trusted), null);
  assert.equal(await adoptKeySet(decodeKeySet(await keySet(2, [[2, two]], [])), 1n, trusted), null);
  const altered = await keySet(2, [[1, one], [2, two]], [[1, one]]);
  altered[30] ^= 1;
  assert.equal(await adoptKeySet(decodeKeySet(altered), 1n, trusted), null);
  // Not canonical: trailing bytes, truncation, ids out of order, no keys.
  const good = await keySet(2, [[1, one], [2, two]], [[1, one]]);
  assert.throws(() => decodeKeySet(Uint8Array.of(...good, 0)), Malformed);
  assert.throws(() => decodeKeySet(good.subarray(0, good.length - 1)), Malformed);
  const disordered = await keySet(2, [[2, two], [1, one]], [[1, one]]);
  assert.throws(() => decodeKeySet(disordered), Malformed);
  const empty = await keySet(2, [], [[1, one]]);
  assert.throws(() => decodeKeySet(empty), Malformed);
});

test("the currencies are the reader's, each with its ISO 4217 minor units", () => {
  const rust = readFileSync(`${ROOT}crates/protocol/src/currency.rs`, "utf8");
  const theirs = [...rust.matchAll(/\("([A-Z]{3})", (\d+)\)/g)].map((m) => [Number(m[2]), m[1]]);
  assert.ok(theirs.length >= 10);
  const ours = currencies().map((c) => [c.code, c.letters]);
  assert.deepEqual(ours.sort(), theirs.sort());
  for (const c of currencies()) {
    const intl = new Intl.NumberFormat("en", { style: "currency", currency: c.letters }).resolvedOptions();
    assert.equal(c.digits, intl.maximumFractionDigits, c.letters);
  }
});
