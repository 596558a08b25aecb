// The token as a QR code: byte mode, error correction M, the smallest
// version that holds it (a 200-byte token is version 10, docs/protocol.md
// §3), drawn by the npm package `qrcode-generator` (vendor/).

import qrcode from "./vendor/qrcode-generator.mjs";

/** The code's modules: `size` × `size`, `dark(row, col)`. */
export function qrModules(bytes) {
  const code = qrcode(0, "M");
  // Byte mode takes a string of char codes 0–255, one per byte.
  code.addData(String.fromCharCode(...bytes), "Byte");
  code.make();
  const size = code.getModuleCount();
  return { size, dark: (row, col) => code.isDark(row, col) };
}

/** Draws the code on a canvas, black on white with a 4-module quiet zone,
 * whatever the page's colour scheme (readers look for dark on light). */
export function drawQr(canvas, modules) {
  const quiet = 4;
  const cells = modules.size + 2 * quiet;
  const scale = Math.max(1, Math.floor(Math.min(canvas.width, canvas.height) / cells));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const offset = Math.floor((Math.min(canvas.width, canvas.height) - cells * scale) / 2);
  ctx.fillStyle = "#000";
  for (let r = 0; r < modules.size; r++) {
    for (let c = 0; c < modules.size; c++) {
      if (modules.dark(r, c)) {
        ctx.fillRect(offset + (quiet + c) * scale, offset + (quiet + r) * scale, scale, scale);
      }
    }
  }
}
