// The wallet's state in IndexedDB: its key pair (non-extractable: the
// private half never leaves WebCrypto), the trusted issuer keys, the
// credential and the running total that belongs to it, the counter. One
// record, changed only by `update` (a lock, then read and write in one
// transaction), committed with strict durability before a token is played
// or shown (docs/protocol.md §3).

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

/** Replaces the state with `change(current)` (a plain function of the
 * stored record, which may throw to change nothing), under a lock every
 * tab and worker of this origin shares, in one transaction that reads and
 * writes: two tabs, or a renewal and a tap, can never both build on the
 * same counter. Resolves with the new state once it is on disk. */
export async function update(change) {
  const locks = globalThis.navigator?.locks;
  const run = () => readModifyWrite(change);
  return locks ? locks.request(DB, run) : run();
}

async function readModifyWrite(change) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, "readwrite", { durability: "strict" });
      const store = tx.objectStore(STORE);
      let next;
      const read = store.get(KEY);
      read.onsuccess = () => {
        try {
          next = change(read.result);
        } catch (e) {
          tx.abort();
          reject(e);
          return;
        }
        store.put(next, KEY);
      };
      tx.oncomplete = () => resolve(next);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("the write was aborted"));
    });
  } finally {
    db.close();
  }
}
