#!/usr/bin/env python3
"""An independent encoder for the robust profile's format 2 (docs/modem.md §2, §2c, §3b, §3c).

Written from the document alone, in plain Python (standard library only): it
reads the payload of robust format 2's test vector
(signals/modem/token-robust-48k.hex), builds the frame the document describes
(Reed–Muller header in 32 cells, CRC-32, rate-2/3 802.11n LDPC codewords
shortened, 4-bit stream cells, the multiplicative layout with repeated cells,
16-FSK with Gray mapping and hash2 phases on bins 427–762, 2048-point symbols
with a 256-sample cyclic prefix and 64-sample raised-cosine cross-fades, a
falling chirp before the data, peak 0.8) and compares it sample by sample with
the vector's 16-bit WAV (signals/modem/token-robust-48k.wav, samples
round(32767·x)): equal lengths and no sample more than 2 LSB apart.

It also checks that every LDPC codeword it makes (the payload's and 24 more
from seeded random information bits) satisfies all 648 parity checks of the H
matrix built from the document's rate-2/3 table, that the header code keeps
its promised distance, and that the document's worked numbers for a 199-byte
payload (§3c, and the robust column of §1's table) are what this encoder
computes.

The vector's cells are read back (strongest bin of each group, FFT of each
symbol's window) and compared with ours; on a mismatch the first differing
cell and the first stage that disagrees (header, layout, body bits, LDPC
parity, repeated cells, or the waveform) are reported.
Run: python3 tests/conformance/modem_robust_v2.py [HEX WAV]   (another vector's files, optional)
The pieces both format-2 scripts build alike (§2's hash, the Reed–Muller
header bits, the LDPC tables and encoding steps, the code stream, reading a
WAV) are in modem_common.py, shared with modem_v2.py.
"""
import cmath
import math
import pathlib
import random
import re
import sys
import time
import zlib

from modem_common import (DOC, FULL_SCALE, RATE, ROOT, base_matrix, code_stream, hash2, header_bits,
                          ldpc_parity, parity_checks_failed, read_wav, worst_difference)

HEX = ROOT / "signals" / "modem" / "token-robust-48k.hex"
WAV = ROOT / "signals" / "modem" / "token-robust-48k.wav"

N, CP, RAMP = 2048, 256, 64          # §2c
SYMBOL = N + CP                      # 2304 samples between symbol starts
FIRST_BIN, GROUPS, TONES = 427, 21, 16
CHIRP_LEN, CHIRP_F0, CHIRP_F1 = 4096, 17900.0, 10000.0   # falling
INFO, PARITY = 1296, 648             # LDPC rate 2/3, n = 1944
BLOCK_ROWS = 8                       # rate 2/3: 8 × 24 blocks
HEADER_CELLS = 32
STEPS = (97, 101, 103, 107)
PEAK = 0.8
TOLERANCE_LSB = 2


# ---------------------------------------------------------------- §2 helpers



def gray(v):
    return v ^ (v >> 1)


def ungray(g):
    v = 0
    while g:
        v ^= g
        g >>= 1
    return v


def fade(e, width):
    """½ − ½cos(π(e+½)/width) at distance e from the nearer end, 1 inside."""
    return 0.5 - 0.5 * math.cos(math.pi * (e + 0.5) / width) if e < width else 1.0


def chirp():
    """§2's chirp with §2c's numbers (17.9 → 10.0 kHz, L = 4096), unit amplitude, double precision."""
    length = CHIRP_LEN
    taper = int(0.05 * length)                  # ⌊0.05·L⌋ = 204
    duration = length / RATE
    sweep = 0.5 * (CHIRP_F1 - CHIRP_F0) / duration    # negative: the chirp falls
    out = []
    for i in range(length):
        t = i / RATE
        e = min(i, length - 1 - i)
        out.append(fade(e, taper) * math.sin(2 * math.pi * (CHIRP_F0 * t + sweep * t * t)))
    return out


COS = [math.cos(2 * math.pi * j / N) for j in range(N)]


def symbol_samples(m, values):
    """Data symbol m: 21 cell values → cp + N + ramp faded samples (§2, §2c).

    x[n] = Σ_k Re(X[k]·e^{+2πikn/N}) over the 21 lit bins only, X[k] = e^{iφ},
    φ = 2π·(hash2(3 + m, k) mod 1024)/1024 = 2π·(2h)/2048: the angle is an exact
    multiple of 2π/N, so cos comes from a table."""
    assert N % 1024 == 0
    x = [0.0] * N
    for g, v in enumerate(values):
        k = FIRST_BIN + TONES * g + gray(v)
        offset = (hash2(3 + m, k) % 1024) * (N // 1024)
        x = [a + COS[(k * n + offset) % N] for n, a in enumerate(x)]
    total = CP + N + RAMP
    return [fade(min(i, total - 1 - i), RAMP) * x[(i - CP) % N] for i in range(total)]


def frame_length(symbols):
    return CHIRP_LEN + SYMBOL * symbols + RAMP


# ---------------------------------------------------------------- §3b/§3c: bits



def header_values(length):
    h = header_bits(length)
    return [8 * h[4 * j] + 4 * h[4 * j + 1] + 2 * h[4 * j + 2] + h[4 * j + 3] for j in range(HEADER_CELLS)]
















def layout(payload, table):
    """Every cell's value (0..15), cell 21·m + g = group g of data symbol m."""
    stream, codewords, sizes = code_stream(payload, table)
    assert len(stream) % 4 == 0
    used = len(stream) // 4
    stream_cells = [8 * stream[4 * u] + 4 * stream[4 * u + 1] + 2 * stream[4 * u + 2] + stream[4 * u + 3]
                    for u in range(used)]
    symbols = -(-(HEADER_CELLS + used) // GROUPS)
    slots = GROUPS * symbols - HEADER_CELLS
    step = next(p for p in STEPS if math.gcd(p, slots) == 1)
    cells = [None] * (GROUPS * symbols)
    cells[:HEADER_CELLS] = header_values(len(payload))
    source_of = {}                              # cell → stream cell it carries
    for u in range(slots):
        source = u if u < used else (u - used) * used // (slots - used)
        cell = HEADER_CELLS + (u * step) % slots
        assert cells[cell] is None, "layout: two body cells on one cell"
        cells[cell] = stream_cells[source]
        source_of[cell] = (u, source)
    assert None not in cells
    info = dict(bits=8 * (len(payload) + 4), codewords=len(sizes), k=sizes, stream_bits=len(stream),
                used=used, symbols=symbols, slots=slots, step=step, repeated=slots - used,
                samples=frame_length(symbols), stream=stream, source_of=source_of)
    return cells, codewords, info


# ---------------------------------------------------------------- §2c: frame

def render(cells):
    symbols = len(cells) // GROUPS
    frame = [0.0] * frame_length(symbols)
    for m in range(symbols):
        start = CHIRP_LEN + SYMBOL * m
        for i, v in enumerate(symbol_samples(m, cells[GROUPS * m:GROUPS * (m + 1)])):
            frame[start + i] += v
    after = frame[CHIRP_LEN:]                   # data symbols and the final fade
    rms = math.sqrt(sum(v * v for v in after) / len(after))
    amplitude = math.sqrt(2) * rms
    for i, v in enumerate(chirp()):
        frame[i] += amplitude * v
    peak = max(abs(v) for v in frame)
    return [PEAK * v / peak for v in frame]






def fft(values):
    """Iterative radix-2 FFT: X[k] = Σ x[n]·e^{−2πi·k·n/len}."""
    n = len(values)
    a = [complex(v) for v in values]
    j = 0
    for i in range(1, n):
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
        twiddles = [cmath.exp(-2j * math.pi * k / size) for k in range(half)]
        for start in range(0, n, size):
            for k in range(half):
                u = a[start + k]
                v = a[start + k + half] * twiddles[k]
                a[start + k] = u + v
                a[start + k + half] = u - v
        size *= 2
    return a


def cells_of(samples, symbols):
    """Cells read back: per symbol, FFT of the N samples after the prefix; per group, the strongest bin."""
    out = []
    for m in range(symbols):
        start = CHIRP_LEN + SYMBOL * m + CP
        if start + N > len(samples):
            break
        spectrum = fft(samples[start:start + N])
        for g in range(GROUPS):
            base = FIRST_BIN + TONES * g
            energies = [abs(spectrum[base + t]) ** 2 for t in range(TONES)]
            out.append(ungray(energies.index(max(energies))))
    return out


def body_stage(theirs, info):
    """Undo our layout on the vector's cells and say which stream bits differ."""
    ours_stream = info["stream"]
    used = info["used"]
    carried = {}
    for cell, (u, source) in info["source_of"].items():
        if u < used and cell < len(theirs):
            carried[u] = theirs[cell]
    their_stream = []
    for u in range(used):
        v = carried.get(u)
        their_stream += [None] * 4 if v is None else [(v >> (3 - b)) & 1 for b in range(4)]
    pos, systematic, parity = 0, [], []
    for i, k in enumerate(info["k"]):
        systematic += [pos + j for j in range(k) if their_stream[pos + j] != ours_stream[pos + j]]
        pos += k
        parity += [pos + j for j in range(PARITY) if their_stream[pos + j] != ours_stream[pos + j]]
        pos += PARITY
    wrong = len(systematic) + len(parity)
    if wrong > len(ours_stream) // 4:
        return (f"{wrong} of {len(ours_stream)} stream bits differ: the layout (slots, P, cell numbering), "
                "the codeword split or the bit order within a cell")
    if systematic:
        return (f"{len(systematic)} information bits differ (first: stream bit {systematic[0]}): "
                "body bits (payload, CRC-32, bit order, split)")
    if parity:
        return (f"information bits agree, {len(parity)} parity bits differ (first: stream bit {parity[0]}): "
                "the LDPC encoder")
    return "every stream cell agrees: the repeated (spare) cells differ (§3c's ⌊(u − used)·used / (T − used)⌋)"


def first_disagreement(ours, theirs, info):
    if len(theirs) < len(ours):
        return f"the vector holds only {len(theirs)} whole cells, ours {len(ours)}"
    wrong = [c for c in range(len(ours)) if ours[c] != theirs[c]]
    if not wrong:
        return ("every cell agrees (777 strongest bins): the waveform stage differs "
                "(phases, symbol timing, fades, chirp, scaling)").replace("777", str(len(ours)))
    c = wrong[0]
    where = (f"first: cell {c} = data symbol {c // GROUPS}, group {c % GROUPS}: "
             f"ours {ours[c]} (bin {FIRST_BIN + TONES * (c % GROUPS) + gray(ours[c])}), "
             f"vector {theirs[c]} (bin {FIRST_BIN + TONES * (c % GROUPS) + gray(theirs[c])})")
    header_wrong = [x for x in wrong if x < HEADER_CELLS]
    if header_wrong:
        return f"header: {len(header_wrong)} of {HEADER_CELLS} header cells differ ({where})"
    return f"body cells: {len(wrong)} cells differ ({where}); " + body_stage(theirs, info)


# ---------------------------------------------------------------- document's own numbers

def flat(text):
    return re.sub(r"\s+", " ", text)


def worked_number_checks(table):
    """§3c's worked numbers, and §1's robust column, against this encoder."""
    text = flat(DOC.read_text())
    problems, lines = [], []
    section = text[text.index("## 3c."):text.index("## 4.")]
    m = re.search(r"Worked numbers for a (\d+)-byte payload: B = (\d+), c = (\d+), k = ([\d +]+?), "
                  r"stream (\d+) bits = (\d+) cells, S = (\d+), T = (\d+), P = (\d+), "
                  r"(\d+) repeated cells, ([\d ]+?) samples", section)
    if not m:
        return ["§3c: worked numbers not found in the expected wording"], lines
    length = int(m.group(1))
    _, _, info = layout(bytes(range(length)), table)   # the numbers depend on the length only
    claimed = dict(bits=int(m.group(2)), codewords=int(m.group(3)),
                   k=[int(v) for v in m.group(4).split("+")], stream_bits=int(m.group(5)),
                   used=int(m.group(6)), symbols=int(m.group(7)), slots=int(m.group(8)),
                   step=int(m.group(9)), repeated=int(m.group(10)),
                   samples=int(m.group(11).replace(" ", "")))
    for key, value in claimed.items():
        ok = info[key] == value
        lines.append(f"  {key:<11} document {str(value):<12} ours {info[key]}{'' if ok else '   <-- differs'}")
        if not ok:
            problems.append(f"§3c worked numbers ({length} bytes): {key} is {value} in the document, "
                            f"{info[key]} here")

    # §1's table, robust column: the token's row and the air time of 200 bytes.
    rows = {}
    for line in DOC.read_text().splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 3:
            rows[cols[0].replace("*", "")] = cols[2].replace("*", "")
    token_row = rows.get("199-byte token", "")
    t = re.search(r"(\d+) codewords, each (\d+) information \+ (\d+) parity bits; (\d+) data symbols", token_row)
    _, _, i199 = layout(bytes(199), table)
    if not t:
        problems.append("§1 table: robust column of '199-byte token' not found")
    else:
        got = (i199["codewords"], i199["k"][0], PARITY, i199["symbols"])
        want = tuple(int(v) for v in t.groups())
        same_k = len(set(i199["k"])) == 1
        lines.append(f"  §1 token   document {want} ours {got}")
        if got != want or not same_k:
            problems.append(f"§1 table, 199-byte token: document {want}, here {got} (k = {i199['k']})")
    air = rows.get("air time, 200 bytes", "")
    a = re.search(r"([\d ]+) samples = ([\d.]+) s", air)
    _, _, i200 = layout(bytes(200), table)
    if not a:
        problems.append("§1 table: robust column of 'air time, 200 bytes' not found")
    else:
        samples, seconds = int(a.group(1).replace(" ", "")), float(a.group(2))
        ours_s = round(i200["samples"] / RATE, 3)
        lines.append(f"  §1 200 B   document {samples} samples = {seconds} s; ours {i200['samples']} = {ours_s} s"
                     f" (199 bytes: {i199['samples']})")
        if samples != i200["samples"] or abs(seconds - ours_s) > 0.0005:
            problems.append(f"§1 table, air time of 200 bytes: document {samples} samples = {seconds} s, "
                            f"here {i200['samples']} = {ours_s} s")
        if "199 bytes the same" in air and i199["samples"] != i200["samples"]:
            problems.append("§1 table says 199 bytes take as long as 200; here they do not")
    return problems, lines


def header_distance_check():
    """§3b: 'Any two headers differ in at least 64 of the 128 bits'."""
    words = [int("".join(map(str, header_bits(length))), 2) for length in range(1, 257)]
    return min(bin(a ^ b).count("1") for i, a in enumerate(words) for b in words[i + 1:])


# ---------------------------------------------------------------- main

def main():
    global HEX, WAV
    began = time.monotonic()
    if len(sys.argv) == 3:
        HEX, WAV = (pathlib.Path(a).resolve() for a in sys.argv[1:])
    failures = []
    table = base_matrix("## 3c.", "## 4.", BLOCK_ROWS)

    if zlib.crc32(b"123456789") != 0xCBF43926:
        failures.append("CRC-32 check value")
    distance = header_distance_check()
    print(f"header RM(1,7): minimum distance over all 256 lengths {distance} (document: at least 64)")
    if distance < 64:
        failures.append(f"header code distance {distance} < 64")

    problems, lines = worked_number_checks(table)
    print("worked numbers (199-byte payload, §3c; §1's robust column):")
    print("\n".join(lines))
    failures += problems

    vector_present = HEX.exists() and WAV.exists()
    if HEX.exists():
        payload = bytes.fromhex(HEX.read_text().split()[0])
    else:
        payload = bytes(range(199))             # LDPC checks still run without the vector
    cells, codewords, info = layout(payload, table)
    print(f"payload {len(payload)} bytes{'' if HEX.exists() else ' (stand-in: no vector)'}: "
          f"B = {info['bits']}, c = {info['codewords']}, k = {info['k']}, stream {info['stream_bits']} bits = "
          f"{info['used']} cells, S = {info['symbols']}, T = {info['slots']}, P = {info['step']}, "
          f"{info['repeated']} repeated cells, {info['samples']} samples")

    # LDPC: the payload's codewords, then seeded random information words,
    # full and shortened (random k, zeros after), all against H built from the table.
    rng = random.Random(20161)
    extra = [[rng.getrandbits(1) for _ in range(INFO)] for _ in range(16)]
    for _ in range(8):
        k = rng.randrange(1, INFO + 1)
        extra.append([rng.getrandbits(1) for _ in range(k)] + [0] * (INFO - k))
    checked = codewords + [word + ldpc_parity(word, table) for word in extra]
    failed = [parity_checks_failed(cw, table) for cw in checked]
    if any(failed):
        bad = [(n, f) for n, f in enumerate(failed) if f]
        failures.append(f"LDPC: {len(bad)} of {len(checked)} codewords fail parity checks "
                        f"(codeword, failed checks of {PARITY}): {bad[:5]}")
    print(f"LDPC: {len(checked)} codewords ({len(codewords)} of the payload), "
          f"{sum(failed)} failed parity checks of {PARITY * len(checked)}")

    if not vector_present:
        failures.append(f"test vector missing: {HEX} / {WAV}")
    else:
        ours = render(cells)
        vector = read_wav(WAV)
        print(f"length: ours {len(ours)} samples, vector {len(vector)}")
        if len(ours) != len(vector):
            failures.append(f"length differs: ours {len(ours)}, vector {len(vector)}")
        worst, at = worst_difference(ours, vector)
        print(f"largest difference: {worst:.2f} LSB (sample {at})")
        samples_ok = worst <= TOLERANCE_LSB
        if not samples_ok:
            failures.append(f"samples differ by up to {worst:.1f} LSB (> {TOLERANCE_LSB})")
        theirs = cells_of(vector, info["symbols"])
        agree = sum(a == b for a, b in zip(cells, theirs))
        print(f"cells read back from the vector: {agree} of {len(cells)} agree")
        if agree != len(cells) or not samples_ok:
            mine = cells_of([round(FULL_SCALE * v) for v in ours], info["symbols"])
            if mine != cells:
                failures.append("(self-check) reading our own frame back does not give our cells: "
                                "the cell diagnosis below is not trustworthy")
            failures.append("first stage to disagree: " + first_disagreement(cells, theirs, info))

    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    verdict = "FAIL" if failures else "PASS"
    print(f"modem robust format 2 conformance: {verdict} ({time.monotonic() - began:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
