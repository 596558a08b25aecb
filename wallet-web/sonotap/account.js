// What a phone and the operator's hub say to each other over the internet
// (docs/accounts.md §3): enrolment codes, signed wallet requests, the
// renewal answer with its note, the account statement.

import { Malformed, Reader, Writer, concat, equal, tag } from "./bytes.js";
import { CREDENTIAL_LEN, credentialDigest, credentialSignedBy, decodeCredential } from "./credential.js";
import { publicBytes, randomBytes, sign, verify } from "./crypto.js";
import { walletId } from "./ids.js";

const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/** The 16 canonical letters of a code of 10 random bytes (§3.1). */
export function encodeEnrolCode(random) {
  if (random.length !== 10) throw new RangeError("a code is 10 bytes");
  const n = random.reduce((acc, b) => (acc << 8n) | BigInt(b), 0n);
  let out = "";
  for (let i = 0; i < 16; i++) out += BASE32[Number((n >> BigInt(5 * (15 - i))) & 31n)];
  return out;
}

/** What a person typed, as the canonical code, or a `Malformed` saying
 * why not (§3.1: spaces and dashes dropped, letters upper-cased). */
export function normaliseEnrolCode(typed) {
  const code = typed.replace(/[\s-]/g, "").replace(/[a-z]/g, (c) => c.toUpperCase());
  if (code.length !== 16) throw new Malformed("enrolment code", `${code.length} characters, not 16`);
  const bad = [...code].find((c) => !BASE32.includes(c));
  if (bad !== undefined) throw new Malformed("enrolment code", `'${bad}' is not one of its letters`);
  return code;
}

const KINDS = {
  enrol: "sonotap/v1/enrol",
  renew: "sonotap/v1/renew",
  statement: "sonotap/v1/statement-request",
};

/** A signed wallet request (§3.2). `ask` is `{ kind: "enrol", code }`,
 * `{ kind: "renew" }` or `{ kind: "statement", before }`; `timeMs` is the
 * hub's clock as the phone estimates it. */
export async function walletRequest(ask, keys, timeMs, nonce = randomBytes(16)) {
  const domain = KINDS[ask.kind];
  if (!domain) throw new RangeError(`no request of kind ${ask.kind}`);
  if (nonce.length !== 16) throw new RangeError("a nonce is 16 bytes");
  const w = new Writer()
    .raw(tag(domain))
    .raw(await publicBytes(keys.publicKey))
    .u64(timeMs)
    .raw(nonce);
  if (ask.kind === "enrol") w.str8(normaliseEnrolCode(ask.code));
  if (ask.kind === "statement") w.u64(ask.before ?? 0);
  const body = w.bytes();
  return { bytes: concat(body, await sign(keys.privateKey, body)), nonce };
}

/** The hub's renewal note (docs/sync.md §3.8). */
function decodeNote(r) {
  r.expectTag("sonotap/v1/renewal");
  const note = {
    credentialDigest: r.take(32),
    highestCounter: r.u32(),
    hubTime: Number(r.u64()),
    issuerKeyId: r.u8(),
    issuerKey: r.take(32),
  };
  note.signature = r.take(64);
  return note;
}

/** Parses a renewal answer (§3.3) canonically. */
export function decodeRenewed(bytes) {
  const r = new Reader(bytes, "renewal answer");
  r.expectTag("sonotap/v1/renewed");
  const credential = decodeCredential(r.take(CREDENTIAL_LEN));
  const noteStart = r.offset;
  const note = decodeNote(r);
  r.end();
  note.bytes = bytes.slice(noteStart);
  return { credential, note };
}

/** Why a renewal answer is not installed. */
export class NotInstalled extends Error {
  constructor(detail) {
    super(detail);
    this.name = "NotInstalled";
  }
}

/** The checks of §3.3 before a phone installs a renewed credential:
 * `trusted` maps issuer key ids to the 32-byte keys the phone trusts
 * (empty for its first credential). Returns the note's key id and key,
 * which a first credential makes trusted. */
export async function checkRenewed({ credential, note }, ownKey, trusted) {
  if (!equal(credential.walletKey, ownKey)) throw new NotInstalled("the credential names another wallet key");
  if (!equal(note.credentialDigest, await credentialDigest(credential))) {
    throw new NotInstalled("the note names another credential");
  }
  if (note.issuerKeyId !== credential.issuerKeyId) {
    throw new NotInstalled("the note's key id is not the credential's");
  }
  if (trusted.size > 0) {
    const known = trusted.get(note.issuerKeyId);
    if (!known || !equal(known, note.issuerKey)) {
      throw new NotInstalled(`issuer key ${note.issuerKeyId} is not one this phone trusts`);
    }
  }
  if (!(await credentialSignedBy(credential, note.issuerKey))) {
    throw new NotInstalled("the credential's signature does not verify");
  }
  // The note's signature covers every byte before it, its tag included.
  const signed = note.bytes.subarray(0, note.bytes.length - 64);
  if (!(await verify(note.issuerKey, note.signature, signed))) {
    throw new NotInstalled("the note's signature does not verify");
  }
  return { keyId: note.issuerKeyId, key: note.issuerKey };
}

/** Parses the hub's signed issuer key set (docs/sync.md §3.4), which a
 * renewal answer carries beside the credential (§3.3), canonically:
 * `version` (BigInt), `keys` and `signatures` as `[key id, bytes]`, and
 * `signed`, the bytes every signature covers. */
export function decodeKeySet(bytes) {
  const what = "key set";
  const r = new Reader(bytes, what);
  r.expectTag("sonotap/v1/keyset");
  const version = r.u64();
  const keys = Array.from({ length: r.u8() }, () => [r.u8(), r.take(32)]);
  const signed = bytes.slice(0, r.offset);
  const signatures = Array.from({ length: r.u8() }, () => [r.u8(), r.take(64)]);
  r.end();
  if (!keys.length) throw new Malformed(what, "no keys");
  if (keys.some(([id], i) => i > 0 && id <= keys[i - 1][0])) {
    throw new Malformed(what, "key ids not strictly ascending");
  }
  return { version, keys, signatures, signed };
}

/** What a phone trusting `trusted` (key id → key) at key-set version
 * `current` (BigInt) does with a key set (docs/accounts.md §3.3): a set a
 * key it trusts signed, of a higher version, becomes its trusted keys (the
 * new Map). Anything else leaves them as they are (null), and the renewal
 * beside it is checked against them: a set no trusted key signed, the same
 * version (even with other keys), and an older one (which would bring a
 * retired key back; a reader refuses it as an answer, a phone only keeps
 * its keys, so that a hub restored from an older backup cannot stop every
 * phone from renewing). */
export async function adoptKeySet(set, current, trusted) {
  let vouched = false;
  for (const [id, signature] of set.signatures) {
    const key = trusted.get(id);
    if (key && (await verify(key, signature, set.signed))) {
      vouched = true;
      break;
    }
  }
  return vouched && set.version > current ? new Map(set.keys) : null;
}

/** A renewal that grants less than the current credential has left is set
 * aside while the current one is valid this much longer (seconds after the
 * new credential's start), as the CLI wallet does. */
export const KEEP_CURRENT_SECS = 3600 + 300;

/** Which credential a wallet uses after a checked renewal answer, from
 * what only the phone knows (docs/accounts.md §2): `"same"` (the one in
 * use again: keep its running total), `"current"` (the offer grants less
 * than the current one has left and the current one lasts more than
 * another hour: keep it; the note still moves the counter) or `"offered"`
 * (install it, with a fresh running total). An offer older than the
 * credential in use (a replayed answer) is refused. */
export function credentialAfterRenewal(current, runningTotal, offered) {
  if (!current) return "offered";
  if (equal(current.bytes, offered.bytes)) return "same";
  if (offered.validFrom < current.validFrom) {
    throw new NotInstalled("the hub offered a credential older than the one in use");
  }
  const left = Math.max(0, current.offlineLimit - runningTotal);
  const lasts = current.validUntil > offered.validFrom + KEEP_CURRENT_SECS;
  return lasts && left > offered.offlineLimit ? "current" : "offered";
}

export const EntryKind = Object.freeze({ 1: "top_up", 2: "charge", 3: "void", 4: "adjustment" });
export const AccountState = Object.freeze({ 1: "open", 2: "suspended", 3: "closed" });
export const STATEMENT_PAGE = 100;

/** Parses an account statement (§3.4) canonically; amounts are BigInt. */
export function decodeStatement(bytes) {
  const what = "statement";
  const r = new Reader(bytes, what);
  r.expectTag("sonotap/v1/statement");
  const s = {
    nonce: r.take(16),
    walletId: r.take(8),
    at: Number(r.u64()),
    state: AccountState[r.u8()],
    currency: r.u16(),
    balance: r.i64(),
    creditLine: r.u64(),
    exposure: r.u64(),
    nextBefore: r.u64(),
    entries: [],
  };
  if (!s.state) throw new Malformed(what, "an unknown account state");
  const count = r.u8();
  if (count > STATEMENT_PAGE) throw new Malformed(what, `${count} entries (at most ${STATEMENT_PAGE})`);
  for (let i = 0; i < count; i++) {
    const e = { id: r.u64(), kind: EntryKind[r.u8()] };
    if (!e.kind) throw new Malformed(what, "an unknown entry kind");
    Object.assign(e, { amount: r.i64(), at: Number(r.u64()), source: r.str8(), seq: r.u64() });
    s.entries.push(e);
  }
  s.signedLength = r.offset + 1;
  s.keyId = r.u8();
  s.signature = r.take(64);
  r.end();
  s.bytes = Uint8Array.from(bytes);
  return s;
}

/** Whether a decoded statement is the answer to the request with `nonce`
 * from wallet key `ownKey`, signed by a trusted issuer key (§3.4). */
export async function statementChecks(statement, nonce, ownKey, trusted) {
  const key = trusted.get(statement.keyId);
  if (!key) return false;
  if (!equal(statement.nonce, nonce)) return false;
  if (!equal(statement.walletId, await walletId(ownKey))) return false;
  return verify(key, statement.signature, statement.bytes.subarray(0, statement.signedLength));
}
