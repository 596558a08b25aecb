// Names derived from keys and reader ids (docs/protocol.md §1, §3b).

import { Writer, concat, tag } from "./bytes.js";
import { sha256 } from "./crypto.js";

const encoder = new TextEncoder();

/** First 8 bytes of SHA-256("sonotap/v1/wallet-id" ‖ 0 ‖ wallet key). */
export async function walletId(walletKey) {
  return (await sha256(concat(tag("sonotap/v1/wallet-id"), walletKey))).slice(0, 8);
}

/** A reader's tag: the first 4 bytes of SHA-256("sonotap/v1/reader-tag" ‖ 0
 * ‖ reader id) read big-endian, or 1 if that is 0. */
export async function readerTag(readerId) {
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(readerId)) {
    throw new RangeError("a reader id is 1–64 characters from A-Z a-z 0-9 . _ -");
  }
  const h = await sha256(concat(tag("sonotap/v1/reader-tag"), encoder.encode(readerId)));
  return (((h[0] << 24) >>> 0) + (h[1] << 16) + (h[2] << 8) + h[3]) || 1;
}

/** What a version-2 token is bound to: the first 4 bytes of
 * SHA-256("sonotap/v2/gate-binding" ‖ 0 ‖ reader tag ‖ challenge). */
export async function gateBinding(readerTagValue, challenge) {
  if (challenge.length !== 8) throw new RangeError("a challenge is 8 bytes");
  const input = new Writer().raw(tag("sonotap/v2/gate-binding")).u32(readerTagValue).raw(challenge);
  return (await sha256(input.bytes())).slice(0, 4);
}
