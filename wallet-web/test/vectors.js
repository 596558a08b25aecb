// The test vectors of the project's documents, read from the documents
// themselves, so that the JS module is held to what a phone developer reads.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../", import.meta.url));

/** Every `name hex` line of the document's vector block(s), by name; a
 * document with several blocks gives the one at `index`. */
export function vectors(doc, index = 0) {
  const text = readFileSync(root + doc, "utf8");
  const blocks = text.split("<!-- vectors:begin -->").slice(1).map((b) => b.split("<!-- vectors:end -->")[0]);
  const block = blocks[index];
  if (block === undefined) throw new Error(`${doc} has no vector block ${index}`);
  return Object.fromEntries([...block.matchAll(/^([a-z_0-9]+)\s+([0-9a-f]+)$/gm)].map((m) => [m[1], m[2]]));
}

export const ROOT = root;

/** The sonotap binary the tests run: $SONOTAP_BIN, or the workspace's build. */
export function sonotap() {
  const candidates = [process.env.SONOTAP_BIN, `${ROOT}target/debug/sonotap`, `${ROOT}target/release/sonotap`];
  const found = candidates.find((p) => p && existsSync(p));
  assert.ok(found, "no sonotap binary: run `cargo build` first or set SONOTAP_BIN");
  return found;
}
