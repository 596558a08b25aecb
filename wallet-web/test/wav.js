// 16-bit mono PCM WAV of samples in −1..1 (round(32767·x)), as the
// project's vectors are written: for the tests and the bench.
export function wav(samples, rate) {
  const data = Buffer.alloc(2 * samples.length);
  samples.forEach((v, i) => data.writeInt16LE(Math.round(32767 * Math.max(-1, Math.min(1, v))), 2 * i));
  const head = Buffer.alloc(44);
  head.write("RIFF", 0);
  head.writeUInt32LE(36 + data.length, 4);
  head.write("WAVEfmt ", 8);
  head.writeUInt32LE(16, 16);
  head.writeUInt16LE(1, 20);
  head.writeUInt16LE(1, 22);
  head.writeUInt32LE(rate, 24);
  head.writeUInt32LE(2 * rate, 28);
  head.writeUInt16LE(2, 32);
  head.writeUInt16LE(16, 34);
  head.write("data", 36);
  head.writeUInt32LE(data.length, 40);
  return Buffer.concat([head, data]);
}
