// Payment tokens a wallet signs (docs/protocol.md §3, §3b), and the checks
// a wallet runs before signing so that it never signs what a reader must
// decline (§3, "Payments a reader would decline").

import { Writer, concat, tag } from "./bytes.js";
import { sign } from "./crypto.js";

export const TOKEN_V1_LEN = 199;
export const TOKEN_V2_LEN = 200;

/** Why a wallet refuses to sign, in the reader's words. */
export class Refused extends Error {
  constructor(reason, detail) {
    super(`${reason}: ${detail}`);
    this.name = "Refused";
    this.reason = reason;
  }
}

/** The checks of docs/protocol.md §4 a wallet can run on its own. */
export function checkPayment(credential, { amount, totalBefore, timestamp }) {
  if (!Number.isInteger(amount) || amount < 1) throw new RangeError("an amount is at least 1");
  if (timestamp < credential.validFrom) {
    throw new Refused("credential_not_yet_valid", `valid from ${credential.validFrom}`);
  }
  if (timestamp >= credential.validUntil) {
    throw new Refused("credential_expired", `expired at ${credential.validUntil}`);
  }
  if (amount > credential.perPaymentCap) {
    throw new Refused("over_payment_cap", `${amount} is over the cap of ${credential.perPaymentCap}`);
  }
  if (totalBefore + amount > credential.offlineLimit) {
    throw new Refused(
      "over_offline_limit",
      `${totalBefore} spent + ${amount} is over the offline limit of ${credential.offlineLimit}`,
    );
  }
}

function payment({ amount, counter, totalBefore, timestamp }, last) {
  if (!Number.isInteger(counter) || counter < 1) throw new RangeError("a counter starts at 1");
  return new Writer().u32(amount).u32(counter).u32(totalBefore).u32(timestamp).raw(last).bytes();
}

/** A version-1 token (199 bytes): for `readerTag` (0: any reader). */
export async function signTokenV1(credential, terms, readerTagValue, privateKey) {
  checkPayment(credential, terms);
  const tagBytes = new Writer().u32(readerTagValue).bytes();
  const body = concat(credential.bytes, payment(terms, tagBytes));
  const signature = await sign(privateKey, concat(tag("sonotap/v1/payment"), body));
  return concat(body, signature);
}

/** A version-2 token (200 bytes), bound to a gate's live challenge. */
export async function signTokenV2(credential, terms, binding, privateKey) {
  checkPayment(credential, terms);
  if (binding.length !== 4) throw new RangeError("a gate binding is 4 bytes");
  const body = concat(Uint8Array.of(2), credential.bytes, payment(terms, binding));
  const signature = await sign(privateKey, concat(tag("sonotap/v2/payment"), body));
  return concat(body, signature);
}
