// Signal pieces the modem's encoder (modem.js) and the beacon's decoder
// (beacon.js) share: the internal rate, §2's fade and chirp, and a radix-2
// FFT. Internal to the module (not exported by index.js).

/** The rate every frame is made and analysed at (docs/modem.md §1). */
export const RATE = 48000;

/** §2's raised-cosine fade weight of the sample `e` from an edge. */
export function fade(e, width) {
  return e < width ? 0.5 - 0.5 * Math.cos((Math.PI * (e + 0.5)) / width) : 1;
}

/** §2's linear chirp from f0 to f1 Hz over `length` samples, faded over
 * its first and last 5 %, unit amplitude. */
export function chirp(length, f0, f1) {
  const taper = Math.floor(0.05 * length);
  const sweep = (0.5 * (f1 - f0)) / (length / RATE);
  const out = new Float64Array(length);
  for (let i = 0; i < length; i++) {
    const t = i / RATE;
    out[i] = fade(Math.min(i, length - 1 - i), taper) * Math.sin(2 * Math.PI * (f0 * t + sweep * t * t));
  }
  return out;
}

/** In place, radix 2 (`re`, `im` of one power-of-two length N), not
 * normalised: X[k] = Σ x[n]·e^{∓2πikn/N}, the minus sign forward
 * (`inverse` false), the plus sign inverse. */
export function fft(re, im, inverse = false) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j |= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  const sign = inverse ? 1 : -1;
  for (let size = 2; size <= n; size *= 2) {
    const half = size / 2;
    const angle = (sign * 2 * Math.PI) / size;
    for (let k = 0; k < half; k++) {
      const wr = Math.cos(angle * k);
      const wi = Math.sin(angle * k);
      for (let start = 0; start < n; start += size) {
        const a = start + k;
        const b = a + half;
        const vr = re[b] * wr - im[b] * wi;
        const vi = re[b] * wi + im[b] * wr;
        re[b] = re[a] - vr;
        im[b] = im[a] - vi;
        re[a] += vr;
        im[a] += vi;
      }
    }
  }
}

export function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}
