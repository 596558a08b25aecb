// The wallet's state in IndexedDB: its key pair (non-extractable: the
// private half never leaves WebCrypto), the trusted issuer keys, the
// credential and the running total that belongs to it, the counter. One
// record, replaced whole in one transaction, committed with strict
// durability before a token is played or shown (docs/protocol.md §3).

const DB = "sonotap-wallet";
const STORE = "wallet";
const KEY = "state";

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/** The stored state, or undefined before the first run. */
export async function load() {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const request = db.transaction(STORE, "readonly").objectStore(STORE).get(KEY);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  } finally {
    db.close();
  }
}

/** Replaces the state; resolves only once the write is on disk. */
export async function save(state) {
  const db = await open();
  try {
    await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, "readwrite", { durability: "strict" });
      tx.objectStore(STORE).put(state, KEY);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("the write was aborted"));
    });
  } finally {
    db.close();
  }
}
