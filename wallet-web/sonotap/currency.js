// Currencies (ISO 4217): a credential and a statement name one by its
// numeric code and count amounts in its minor units (docs/protocol.md §2).
// The same short list as the reader's (crates/protocol/src/currency.rs),
// with each currency's minor units: a yen or a won has none.

const KNOWN = Object.freeze({
  36: ["AUD", 2],
  986: ["BRL", 2],
  124: ["CAD", 2],
  756: ["CHF", 2],
  156: ["CNY", 2],
  978: ["EUR", 2],
  826: ["GBP", 2],
  344: ["HKD", 2],
  356: ["INR", 2],
  392: ["JPY", 0],
  410: ["KRW", 0],
  752: ["SEK", 2],
  702: ["SGD", 2],
  840: ["USD", 2],
});

/** `{ letters, digits }` for a numeric code on the list (digits: how many
 * minor units make a major one, as a power of ten), else null: its
 * amounts can only be shown as a count of minor units. */
export function currency(code) {
  const known = KNOWN[code];
  return known ? { letters: known[0], digits: known[1] } : null;
}

/** Every currency on the list, by numeric code (for tests and pickers). */
export function currencies() {
  return Object.entries(KNOWN).map(([code, [letters, digits]]) => ({ code: Number(code), letters, digits }));
}
