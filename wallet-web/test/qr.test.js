// The wallet's QR code: the vendored npm renderer is the package's, and
// the code it draws for a token is read back by the real `sonotap qr
// decode` (the reader's decoder).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { deflateSync } from "node:zlib";

import { qrModules } from "../qr.js";
import { crc32, fromHex, hex } from "../sonotap/index.js";
import { ROOT, sonotap, vectors } from "./vectors.js";

test("vendor/qrcode-generator.mjs is the npm package's dist/qrcode.mjs", () => {
  const installed = `${ROOT}wallet-web/node_modules/qrcode-generator/dist/qrcode.mjs`;
  assert.ok(existsSync(installed), "run `npm ci` in wallet-web/ first");
  const pinned = JSON.parse(readFileSync(`${ROOT}wallet-web/package.json`, "utf8")).dependencies;
  const version = JSON.parse(
    readFileSync(`${ROOT}wallet-web/node_modules/qrcode-generator/package.json`, "utf8"),
  ).version;
  assert.equal(version, pinned["qrcode-generator"]);
  assert.ok(readFileSync(installed).equals(readFileSync(`${ROOT}wallet-web/vendor/qrcode-generator.mjs`)));
});

/** An 8-bit greyscale PNG of the code, `scale` pixels a module, 4 quiet. */
function png(modules, scale) {
  const side = (modules.size + 8) * scale;
  const raw = Buffer.alloc(side * (side + 1), 255);
  for (let y = 0; y < side; y++) {
    raw[y * (side + 1)] = 0; // filter: none
    for (let x = 0; x < side; x++) {
      const r = Math.floor(y / scale) - 4;
      const c = Math.floor(x / scale) - 4;
      const inside = r >= 0 && c >= 0 && r < modules.size && c < modules.size;
      if (inside && modules.dark(r, c)) raw[y * (side + 1) + 1 + x] = 0;
    }
  }
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc32(body), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(side, 0);
  header.writeUInt32BE(side, 4);
  header.set([8, 0, 0, 0, 0], 8); // 8-bit greyscale
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

test("the reader's decoder reads the wallet's QR code of a version-2 token", () => {
  const token = fromHex(vectors("docs/protocol.md").token_v2);
  const modules = qrModules(token);
  assert.equal(modules.size, 57, "a 200-byte token is a version-10 code at level M");
  const dir = mkdtempSync(join(tmpdir(), "sonotap-js-qr-"));
  try {
    const file = join(dir, "token.png");
    writeFileSync(file, png(modules, 6));
    const out = execFileSync(sonotap(), ["qr", "decode", file], { encoding: "utf8" });
    assert.equal(out.trim(), hex(token));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
