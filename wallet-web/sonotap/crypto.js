// SHA-256 and Ed25519 from the platform's WebCrypto (browsers and node):
// the wallet invents no cryptography and bundles none.

// Browsers and node 19+ have it global; node 18 (Debian 12's) in a module.
const webcrypto = globalThis.crypto ?? (await import("node:crypto")).webcrypto;
const subtle = webcrypto.subtle;
const ED25519 = { name: "Ed25519" };
// PKCS #8 wrapping of a 32-byte Ed25519 seed (RFC 8410).
const PKCS8_SEED_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
]);

export async function sha256(bytes) {
  return new Uint8Array(await subtle.digest("SHA-256", bytes));
}

/** A new wallet key pair whose private half cannot leave WebCrypto. */
export async function generateKey() {
  return subtle.generateKey(ED25519, false, ["sign", "verify"]);
}

/** A key pair from a 32-byte seed (test vectors, never a phone's key). */
export async function keyFromSeed(seed) {
  const pkcs8 = new Uint8Array(48);
  pkcs8.set(PKCS8_SEED_PREFIX);
  pkcs8.set(seed, 16);
  const privateKey = await subtle.importKey("pkcs8", pkcs8, ED25519, false, ["sign"]);
  // WebCrypto derives no public key from a private one directly: a JWK
  // export of an extractable twin carries it (`x`).
  const twin = await subtle.importKey("pkcs8", pkcs8, ED25519, true, ["sign"]);
  const jwk = await subtle.exportKey("jwk", twin);
  const publicKey = await subtle.importKey(
    "raw",
    base64UrlDecode(jwk.x),
    ED25519,
    true,
    ["verify"],
  );
  return { privateKey, publicKey };
}

/** The 32-byte encoding of a public key. */
export async function publicBytes(publicKey) {
  return new Uint8Array(await subtle.exportKey("raw", publicKey));
}

export async function sign(privateKey, message) {
  return new Uint8Array(await subtle.sign(ED25519, privateKey, message));
}

// ℓ, the order of the Ed25519 base point, little-endian.
const L = Uint8Array.from([
  0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
]);

/** Whether `signature` is the key's over `message`. Beyond WebCrypto's
 * check it refuses a non-canonical S (S ≥ ℓ), as `verify_strict` does; the
 * keys a phone checks against are the issuer's, which it trusts. */
export async function verify(publicKeyBytes, signature, message) {
  if (signature.length !== 64 || publicKeyBytes.length !== 32) return false;
  const s = signature.subarray(32);
  for (let i = 31; i >= 0; i--) {
    if (s[i] < L[i]) break;
    if (s[i] > L[i] || i === 0) return false;
  }
  try {
    const key = await subtle.importKey("raw", publicKeyBytes, ED25519, false, ["verify"]);
    return await subtle.verify(ED25519, key, signature, message);
  } catch {
    return false;
  }
}

/** Random bytes from the platform. */
export function randomBytes(n) {
  return webcrypto.getRandomValues(new Uint8Array(n));
}

function base64UrlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}
