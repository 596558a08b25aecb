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

/** Most output phases whose kernels are made: common rate pairs need few
 * (147 for 48 → 44.1 kHz, 160 back); an odd rate such as 47 999 Hz would
 * need one per output sample for a second, and gets this many, its
 * positions rounded to the nearest 1/1024 of a sample (10 ns at 48 kHz). */
const PHASES = 1024;

/** docs/modem.md §4's resampling kernel from `from` to `to` Hz: a
 * Blackman-windowed sinc, 32 zero crossings either side, cut off at 95 %
 * of the lower Nyquist frequency, unity gain at DC. Output i sits at input
 * position i·from/to and takes inputs floor(that) − half + 1 … + half;
 * `weights(i)` are their weights, which depend only on the position's
 * fraction: made once per phase. */
export function sincKernels(from, to) {
  const fc = 0.5 * 0.95 * Math.min(1, to / from);
  const half = Math.ceil(32 / (2 * fc));
  const period = to / gcd(from, to);
  const make = (frac) => {
    const w = new Float64Array(2 * half);
    let sum = 0;
    for (let j = 0; j < w.length; j++) {
      const t = -half + 1 + j - frac;
      const u = (-t / half + 1) / 2;
      if (u < 0 || u > 1) continue;
      const x = 2 * fc * t;
      const sinc = Math.abs(x) < 1e-12 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      w[j] = sinc * (0.42 - 0.5 * Math.cos(2 * Math.PI * u) + 0.08 * Math.cos(4 * Math.PI * u));
      sum += w[j];
    }
    for (let j = 0; j < w.length; j++) w[j] /= sum;
    return w;
  };
  const fraction = (i) => {
    const at = ((i % period) * from) / to;
    return at - Math.floor(at);
  };
  if (period <= PHASES) {
    const kept = Array.from({ length: period }, (_, i) => make(fraction(i)));
    return { half, weights: (i) => kept[i % period] };
  }
  // 0 … 1 inclusive: a fraction rounded up to 1 is the next input sample's
  // kernel, shifted by one tap.
  const kept = Array.from({ length: PHASES + 1 }, (_, q) => make(q / PHASES));
  return { half, weights: (i) => kept[Math.round(fraction(i) * PHASES)] };
}

export function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}
