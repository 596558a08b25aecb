// The credential an issuer grants a wallet (docs/protocol.md §2).

import { Malformed, Reader, concat, tag } from "./bytes.js";
import { sha256, verify } from "./crypto.js";

export const CREDENTIAL_LEN = 115;
const SIGNED_LEN = 51;

export const Scope = Object.freeze({ transit: 0x01, vending: 0x02 });

/** The credential's fields; `bytes` are its 115 bytes. Refuses anything
 * but the canonical encoding (docs/protocol.md §3, "Canonical encoding"). */
export function decodeCredential(bytes) {
  const what = "credential";
  if (bytes.length !== CREDENTIAL_LEN) {
    throw new Malformed(what, `${bytes.length} bytes, not ${CREDENTIAL_LEN}`);
  }
  const r = new Reader(bytes, what);
  const version = r.u8();
  if (version !== 1) throw new Malformed(what, `version ${version}`);
  const c = {
    bytes: Uint8Array.from(bytes),
    issuerKeyId: r.u8(),
    scope: r.u8(),
    currency: r.u16(),
    walletKey: r.take(32),
    offlineLimit: r.u32(),
    perPaymentCap: r.u32(),
    validFrom: r.u32(),
    validHours: r.u16(),
    issuerSignature: r.take(64),
  };
  r.end();
  if (!(c.scope === 0x01 || c.scope === 0x02 || c.scope >= 0x80)) {
    throw new Malformed(what, `reserved scope ${c.scope}`);
  }
  if (c.currency < 1 || c.currency > 999) throw new Malformed(what, `currency ${c.currency}`);
  if (c.validHours === 0) throw new Malformed(what, "zero hours");
  if (c.perPaymentCap === 0) throw new Malformed(what, "a zero per-payment cap");
  c.validUntil = c.validFrom + 3600 * c.validHours;
  return c;
}

/** SHA-256 of the 115 bytes: how readers and the hub name a credential. */
export function credentialDigest(credential) {
  return sha256(credential.bytes);
}

/** Whether the issuer key `issuerKey` (32 bytes) signed the credential. */
export function credentialSignedBy(credential, issuerKey) {
  const message = concat(tag("sonotap/v1/credential"), credential.bytes.subarray(0, SIGNED_LEN));
  return verify(issuerKey, credential.issuerSignature, message);
}
