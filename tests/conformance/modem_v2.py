#!/usr/bin/env python3
"""An independent encoder for the fast profile's format 2 (docs/modem.md §2, §2b, §3b).

Written from the document alone, in plain Python (standard library only): it
reads the payload of format 2's test vector (signals/modem/token-fast-48k.hex),
builds the frame the document describes (Reed–Muller header, CRC-32, 802.11n
LDPC codewords, the multiplicative layout, QPSK cells on bins 853–1524, a
reference symbol, 4096-point symbols with cyclic prefix and raised-cosine
cross-fades, a chirp before and after, peak 0.8) and compares it sample by
sample with the vector's 16-bit WAV (signals/modem/token-fast-48k.wav, samples
round(32767·x)): equal lengths and no sample more than 2 LSB apart. It also checks that every LDPC codeword it makes (the payload's and 29
more) satisfies all 972 parity checks of the H matrix built from the
document's table.

If this passes, a phone encoder in another language can be written from the
document. If it fails, it says which stage disagrees first (the vector's cells
are read back by FFT at the symbol positions and compared with ours).
Run: python3 tests/conformance/modem_v2.py
The pieces both format-2 scripts build alike (§2's hash, the Reed–Muller
header bits, the LDPC tables and encoding steps, the code stream, reading a
WAV) are in modem_common.py, shared with modem_robust_v2.py.
"""
import cmath
import math
import sys
import time

from modem_common import (RATE, ROOT, Z, base_matrix, code_stream, hash2, header_bits, ldpc_parity,
                          parity_checks_failed, read_wav, worst_difference)

HEX = ROOT / "signals" / "modem" / "token-fast-48k.hex"
WAV = ROOT / "signals" / "modem" / "token-fast-48k.wav"

N, CP, RAMP = 4096, 256, 64
SYMBOL = N + CP                     # 4352 samples between symbol starts
FIRST_BIN, CARRIERS = 853, 672
CHIRP_LEN, CHIRP_F0, CHIRP_F1 = 2048, 9900.0, 17900.0
INFO, PARITY = 972, 972             # LDPC: 1944-bit codewords, rate 1/2
HEADER_CELLS = 64
TOLERANCE_LSB = 2


# ---------------------------------------------------------------- §2 helpers



def qpsk(b0, b1):
    return complex(1 - 2 * b0, 1 - 2 * b1) / math.sqrt(2)


def raised_cosine(e, taper):
    """The document's fade weight at distance e from the nearer end."""
    return 0.5 - 0.5 * math.cos(math.pi * (e + 0.5) / taper) if e < taper else 1.0


def chirp():
    """§2's chirp with §2b's numbers, unit amplitude, in double precision."""
    length = CHIRP_LEN
    taper = int(0.05 * length)
    duration = length / RATE
    out = []
    for i in range(length):
        t = i / RATE
        phase = 2 * math.pi * (CHIRP_F0 * t + 0.5 * (CHIRP_F1 - CHIRP_F0) / duration * t * t)
        e = min(i, length - 1 - i)
        out.append(raised_cosine(e, taper) * math.sin(phase))
    return out


def fft(values, sign):
    """Iterative radix-2 FFT: X[k] = Σ x[n]·e^{sign·2πi·k·n/len}."""
    n = len(values)
    a = list(values)
    j = 0
    for i in range(1, n):                       # bit-reversal permutation
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            a[i], a[j] = a[j], a[i]
    size = 2
    while size <= n:
        half = size // 2
        step = cmath.exp(sign * 2j * math.pi / size)
        twiddles = [step ** k for k in range(half)]
        for start in range(0, n, size):
            for k in range(half):
                u = a[start + k]
                v = a[start + k + half] * twiddles[k]
                a[start + k] = u + v
                a[start + k + half] = u - v
        size *= 2
    return a


def symbol_samples(cells):
    """One symbol: 672 cells on bins 853.. → cp + N + ramp faded samples."""
    spectrum = [0j] * N
    for i, cell in enumerate(cells):
        spectrum[FIRST_BIN + i] = cell
    x = [v.real for v in fft(spectrum, +1)]     # x[n] = Σ Re(X[k]·e^{+2πikn/N})
    total = CP + N + RAMP
    out = []
    for i in range(total):
        e = min(i, total - 1 - i)
        out.append(raised_cosine(e, RAMP) * x[(i - CP) % N])
    return out


# ---------------------------------------------------------------- §3b: bits



def header_carriers():
    return [(2 * j + 1) * CARRIERS // 128 for j in range(HEADER_CELLS)]
















def layout(payload, table):
    """Every cell of every symbol: [reference, data 0, …, data S-1], 672 each."""
    stream, codewords, sizes = code_stream(payload, table)
    used = len(stream) // 2
    symbols = -(-(HEADER_CELLS + used) // CARRIERS)
    slots_total = CARRIERS * symbols - HEADER_CELLS
    step = next(p for p in (97, 101, 103, 107) if math.gcd(p, slots_total) == 1)

    data = [None] * (CARRIERS * symbols)
    h = header_bits(len(payload))
    header_set = set()
    for j, carrier in enumerate(header_carriers()):
        data[carrier] = qpsk(h[2 * j], h[2 * j + 1])
        header_set.add(carrier)
    slots = [cell for cell in range(CARRIERS * symbols) if cell not in header_set]
    for u in range(slots_total):
        source = u if u < used else (u - used) * used // (slots_total - used)
        data[slots[(u * step) % slots_total]] = qpsk(stream[2 * source], stream[2 * source + 1])

    reference = []
    for i in range(CARRIERS):
        v = hash2(5, i)
        reference.append(qpsk(v & 1, (v >> 1) & 1))
    cells = [reference] + [data[CARRIERS * m:CARRIERS * (m + 1)] for m in range(symbols)]
    info = dict(bits=8 * (len(payload) + 4), codewords=len(sizes), k=sizes, used=used,
                symbols=symbols, slots=slots_total, step=step, repeated=slots_total - used,
                stream=stream, slot_cells=slots)
    return cells, codewords, info


# ---------------------------------------------------------------- §2b: frame

def render(cells):
    count = len(cells)                         # 1 + S
    length = 2 * CHIRP_LEN + count * SYMBOL
    frame = [0.0] * (length + RAMP)
    for m, symbol_cells in enumerate(cells):
        start = CHIRP_LEN + m * SYMBOL
        for i, v in enumerate(symbol_samples(symbol_cells)):
            frame[start + i] += v
    body = frame[CHIRP_LEN:CHIRP_LEN + count * SYMBOL]
    rms = math.sqrt(sum(v * v for v in body) / len(body))
    c = chirp()
    second = CHIRP_LEN + count * SYMBOL
    for i in range(CHIRP_LEN):
        frame[i] += rms * c[i]
        frame[second + i] += rms * c[i]
    frame = frame[:length]
    peak = max(abs(v) for v in frame)
    return [0.8 * v / peak for v in frame]






def cells_of(samples, count):
    """The vector's cells read back: FFT of each symbol's window, sign per axis."""
    out = []
    for m in range(count):
        start = CHIRP_LEN + m * SYMBOL + CP
        spectrum = fft(samples[start:start + N], -1)
        out.append([(int(spectrum[FIRST_BIN + i].real < 0), int(spectrum[FIRST_BIN + i].imag < 0))
                    for i in range(CARRIERS)])
    return out


def body_stage(theirs, info):
    """Undo our layout on the vector's cells and say which bits of the code stream differ."""
    flat = [cell for sym in theirs[1:] for cell in sym]
    slots, total, step, used = info["slot_cells"], info["slots"], info["step"], info["used"]
    stream = [bit for u in range(used) for bit in flat[slots[(u * step) % total]]]
    ours = info["stream"]
    pos, systematic, parity = 0, 0, 0
    for k in info["k"]:
        systematic += sum(a != b for a, b in zip(ours[pos:pos + k], stream[pos:pos + k]))
        pos += k
        parity += sum(a != b for a, b in zip(ours[pos:pos + PARITY], stream[pos:pos + PARITY]))
        pos += PARITY
    if systematic + parity > len(ours) // 4:
        return (f"{systematic + parity} of {len(ours)} stream bits differ: "
                "the layout (slots, P), the split or the bit order")
    if systematic:
        return f"{systematic} information bits differ: body bits (payload, CRC-32, bit order, split)"
    if parity:
        return f"information bits agree, {parity} parity bits differ: the LDPC encoder"
    return "every stream cell agrees: the repeated (spare) cells differ"


def first_disagreement(ours, vector_samples, info):
    """Localise a mismatch: reference symbol, header cells, then body cells."""
    theirs = cells_of(vector_samples, len(ours))
    mine = [[(int(c.real < 0), int(c.imag < 0)) for c in sym] for sym in ours]
    wrong_ref = [i for i in range(CARRIERS) if mine[0][i] != theirs[0][i]]
    if wrong_ref:
        return f"reference symbol: {len(wrong_ref)} carriers differ (first: carrier {wrong_ref[0]})"
    header = set(header_carriers())
    wrong_header = [j for j, k in enumerate(header_carriers()) if mine[1][k] != theirs[1][k]]
    if wrong_header:
        return f"header: {len(wrong_header)} of 64 header cells differ (first: cell {wrong_header[0]})"
    wrong = [(m, i) for m in range(1, len(ours)) for i in range(CARRIERS)
             if not (m == 1 and i in header) and mine[m][i] != theirs[m][i]]
    if wrong:
        m, i = wrong[0]
        return (f"body cells: {len(wrong)} data cells differ (first: data symbol {m - 1}, carrier {i}); "
                + body_stage(theirs, info))
    return "every cell agrees: the waveform stage (symbols, fades, chirps, scaling) differs"


def main():
    began = time.monotonic()
    payload = bytes.fromhex(HEX.read_text().split()[0])
    table = base_matrix("## 3b.", "## 3c.", 12)
    cells, codewords, info = layout(payload, table)
    print(f"payload {len(payload)} bytes: B = {info['bits']}, c = {info['codewords']}, k = {info['k']}, "
          f"used = {info['used']} cells, S = {info['symbols']}, T = {info['slots']}, P = {info['step']}, "
          f"{info['repeated']} repeated cells")
    failures = []

    # The token's codewords, then information words of every weight pattern:
    # all ones, one bit in each block column, and pseudo-random ones (hash2).
    extra = [[1] * INFO] + [[int(b == Z * j + j) for b in range(INFO)] for j in range(12)]
    extra += [[hash2(100 + w, b) & 1 for b in range(INFO)] for w in range(16)]
    checked = codewords + [word + ldpc_parity(word, table) for word in extra]
    failed = [parity_checks_failed(cw, table) for cw in checked]
    if any(failed):
        bad = [(n, f) for n, f in enumerate(failed) if f]
        failures.append(f"LDPC: {len(bad)} of {len(checked)} codewords fail parity checks "
                        f"(codeword, failed checks of 972): {bad[:5]}")
    print(f"LDPC: {len(checked)} codewords ({len(codewords)} of the payload), "
          f"{sum(failed)} failed parity checks of {972 * len(checked)}")

    ours = render(cells)
    vector = read_wav(WAV)
    print(f"length: ours {len(ours)} samples, vector {len(vector)}")
    if len(ours) != len(vector):
        failures.append(f"length differs: ours {len(ours)}, vector {len(vector)}")
    worst, at = worst_difference(ours, vector)
    print(f"largest difference: {worst:.2f} LSB (sample {at})")
    if worst > TOLERANCE_LSB:
        failures.append(f"samples differ by up to {worst:.1f} LSB (> {TOLERANCE_LSB})")
        if len(vector) >= CHIRP_LEN + len(cells) * SYMBOL:
            failures.append("first stage to disagree: " + first_disagreement(cells, vector, info))

    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    verdict = "failed" if failures else "passed"
    print(f"modem format 2 conformance: {verdict} ({time.monotonic() - began:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
