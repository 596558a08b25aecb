// sonotap's wallet protocol, for browsers and node (docs/protocol.md,
// docs/accounts.md §3): no UI, no storage, no network; see README.md here.
export * from "./bytes.js";
export * from "./crypto.js";
export * from "./ids.js";
export * from "./credential.js";
export * from "./token.js";
export * from "./account.js";
export * from "./modem.js";
export * from "./beacon.js";
export * from "./currency.js";
