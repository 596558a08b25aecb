#!/usr/bin/env python3
"""An independent encoder for the reader's beacon (docs/modem.md §2, §3, §7).

Written from the document alone, in plain Python (standard library only): it
reads the payload of the beacon's test vector (signals/modem/beacon-48k.hex),
builds the frame §7 describes (RM(1,5) header symbol, payload ‖ CRC-32
through the K = 7 rate-1/2 convolutional code with six tail bits, the
multiplicative layout over data bits with repeated bits, 4-FSK with Gray
mapping and hash2(11 + m, k) phases on bins 781–844, 2048-point symbols with
a 256-sample prefix and 128-sample raised-cosine cross-fades, a chirp
falling from 19.8 to 18.25 kHz, peak 0.8) and compares it sample by sample
with the vector's 16-bit WAV (samples round(32767·x)): equal lengths and no
sample more than 2 LSB apart.

It also checks the header code's distance, the convolutional code's impulse
response against its generators (133, 171 octal), §7.2's worked numbers and
§7's table (air times), and, on a mismatch, reads the vector's cells back
(strongest bin of each group) to say which stage disagrees first (header,
code bits, layout, repeated bits, or the waveform).
Run: python3 tests/conformance/modem_beacon.py [HEX WAV]   (another vector's files, optional)
"""
import math
import pathlib
import re
import struct
import sys
import time
import zlib

from modem_common import DOC, FULL_SCALE, RATE, ROOT, bits_of, hash2, read_wav, worst_difference

HEX = ROOT / "signals" / "modem" / "beacon-48k.hex"
WAV = ROOT / "signals" / "modem" / "beacon-48k.wav"

N, CP, RAMP = 2048, 256, 128         # §7.1
SYMBOL = N + CP
FIRST_BIN, GROUPS, TONES = 781, 16, 4
SYMBOL_BITS = 2 * GROUPS             # 32
CHIRP_LEN, CHIRP_F0, CHIRP_F1 = 4096, 19800.0, 18250.0   # falling
PEAK = 0.8
TOLERANCE_LSB = 2
TAIL = 6


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
    """§2's chirp with §7.1's numbers, unit amplitude, double precision."""
    taper = int(0.05 * CHIRP_LEN)
    duration = CHIRP_LEN / RATE
    sweep = 0.5 * (CHIRP_F1 - CHIRP_F0) / duration
    out = []
    for i in range(CHIRP_LEN):
        t = i / RATE
        e = min(i, CHIRP_LEN - 1 - i)
        out.append(fade(e, taper) * math.sin(2 * math.pi * (CHIRP_F0 * t + sweep * t * t)))
    return out


COS = [math.cos(2 * math.pi * j / N) for j in range(N)]


def symbol_samples(m, values):
    """Symbol m: 16 cell values → cp + N + ramp faded samples. The phase
    2π·(hash2(11 + m, k) mod 1024)/1024 is an exact multiple of 2π/N."""
    x = [0.0] * N
    for g, v in enumerate(values):
        k = FIRST_BIN + TONES * g + gray(v)
        offset = (hash2(11 + m, k) % 1024) * (N // 1024)
        x = [a + COS[(k * n + offset) % N] for n, a in enumerate(x)]
    total = CP + N + RAMP
    return [fade(min(i, total - 1 - i), RAMP) * x[(i - CP) % N] for i in range(total)]


# ---------------------------------------------------------------- §7.2: bits

def header_bits(length):
    """RM(1,5) of len − 1: h_j = parity(v & j), the sixth bit 0."""
    v = length - 1
    return [bin(v & j).count("1") & 1 for j in range(32)]


def convolve(info):
    """§7.2's code: two bits per information and tail bit."""
    b = info + [0] * TAIL
    at = lambda i: b[i] if i >= 0 else 0
    out = []
    for i in range(len(b)):
        out.append(at(i) ^ at(i - 2) ^ at(i - 3) ^ at(i - 5) ^ at(i - 6))
        out.append(at(i) ^ at(i - 1) ^ at(i - 2) ^ at(i - 3) ^ at(i - 6))
    return out


def layout(payload):
    """Every cell's value (16 per symbol, the header's first) and the numbers."""
    body = payload + struct.pack(">I", zlib.crc32(payload) & 0xFFFFFFFF)
    info = bits_of(body)
    code = convolve(info)
    n = len(code)
    data_symbols = -(-n // SYMBOL_BITS)
    slots = SYMBOL_BITS * data_symbols
    step = next(p for p in range(slots * 382 // 1000, slots * 2) if math.gcd(p, slots) == 1)
    data = [None] * slots
    for u in range(slots):
        source = u if u < n else (u - n) * n // (slots - n)
        position = (u * step) % slots
        assert data[position] is None, "layout: two slots on one data bit"
        data[position] = code[source]
    bits = header_bits(len(payload)) + data
    cells = [2 * bits[2 * c] + bits[2 * c + 1] for c in range(len(bits) // 2)]
    symbols = 1 + data_symbols
    numbers = dict(K=len(info), n=n, D=data_symbols, T=slots, P=step, repeated=slots - n,
                   samples=CHIRP_LEN + SYMBOL * symbols + RAMP)
    return cells, code, data, numbers


# ---------------------------------------------------------------- §7.1: frame

def render(cells):
    symbols = len(cells) // GROUPS
    frame = [0.0] * (CHIRP_LEN + SYMBOL * symbols + RAMP)
    for m in range(symbols):
        start = CHIRP_LEN + SYMBOL * m
        for i, v in enumerate(symbol_samples(m, cells[GROUPS * m:GROUPS * (m + 1)])):
            frame[start + i] += v
    after = frame[CHIRP_LEN:]
    rms = math.sqrt(sum(v * v for v in after) / len(after))
    amplitude = math.sqrt(2) * rms
    for i, v in enumerate(chirp()):
        frame[i] += amplitude * v
    peak = max(abs(v) for v in frame)
    return [PEAK * v / peak for v in frame]


def cells_of(samples, symbols):
    """Cells read back: per symbol, the energy of each group's four bins (a
    direct DFT of the N samples after the prefix); the strongest."""
    out = []
    for m in range(symbols):
        start = CHIRP_LEN + SYMBOL * m + CP
        window = samples[start:start + N]
        if len(window) < N:
            break
        for g in range(GROUPS):
            energies = []
            for t in range(TONES):
                k = FIRST_BIN + TONES * g + t
                re_ = sum(x * COS[(k * i) % N] for i, x in enumerate(window))
                im_ = sum(x * COS[(k * i + 3 * N // 4) % N] for i, x in enumerate(window))
                energies.append(re_ * re_ + im_ * im_)
            out.append(ungray(energies.index(max(energies))))
    return out


def first_disagreement(ours, theirs, code, numbers):
    if len(theirs) < len(ours):
        return f"the vector holds only {len(theirs)} whole cells, ours {len(ours)}"
    wrong = [c for c in range(len(ours)) if ours[c] != theirs[c]]
    if not wrong:
        return "every cell agrees: the waveform stage differs (phases, timing, fades, chirp, scaling)"
    c = wrong[0]
    where = f"first: cell {c} = symbol {c // GROUPS}, group {c % GROUPS}: ours {ours[c]}, vector {theirs[c]}"
    if c < GROUPS:
        return f"header: {sum(1 for x in wrong if x < GROUPS)} of {GROUPS} header cells differ ({where})"
    # Undo our layout on their data bits: which code bits differ?
    their_bits = [(v >> (1 - b)) & 1 for v in theirs[GROUPS:len(ours)] for b in range(2)]
    step, slots, n = numbers["P"], numbers["T"], numbers["n"]
    differ = [u for u in range(n) if their_bits[(u * step) % slots] != code[u]]
    if len(differ) > n // 4:
        return f"{len(wrong)} cells differ ({where}); {len(differ)} of {n} code bits: the layout (T, P, bit order)"
    if differ:
        return (f"{len(wrong)} cells differ ({where}); code bits differ from {differ[0]} on: "
                "the body bits (CRC-32, bit order) or the convolutional code")
    return f"{len(wrong)} cells differ ({where}); every code bit agrees: the repeated bits"


# ---------------------------------------------------------------- the document's own numbers

def flat(text):
    return re.sub(r"\s+", " ", text)


def document_checks():
    text = flat(DOC.read_text())
    section = text[text.index("## 7. The reader's beacon"):]
    problems, lines = [], []
    m = re.search(r"Worked numbers for a (\d+)-byte payload: K = (\d+), n = (\d+), D = (\d+), T = (\d+), "
                  r"P = (\d+), (\d+) repeated bits, ([\d ]+?) samples \(([\d.]+) s\)", section)
    if not m:
        return ["§7.2: worked numbers not found in the expected wording"], lines
    length = int(m.group(1))
    _, _, _, ours = layout(bytes(length))
    claimed = dict(K=int(m.group(2)), n=int(m.group(3)), D=int(m.group(4)), T=int(m.group(5)),
                   P=int(m.group(6)), repeated=int(m.group(7)), samples=int(m.group(8).replace(" ", "")))
    for key, value in claimed.items():
        ok = ours[key] == value
        lines.append(f"  {key:<9} document {value:<8} ours {ours[key]}{'' if ok else '   <-- differs'}")
        if not ok:
            problems.append(f"§7.2 worked numbers: {key} is {value} in the document, {ours[key]} here")
    if abs(float(m.group(9)) - ours["samples"] / RATE) > 0.0005:
        problems.append(f"§7.2: {m.group(9)} s is not {ours['samples']} samples")
    t = re.search(r"\| 1 / 32 bytes \| ([\d.]+) s / ([\d.]+) s \|", section)
    if not t:
        problems.append("§7 table: the air times of 1 and 32 bytes not found")
    else:
        for length, claimed_s in ((1, float(t.group(1))), (32, float(t.group(2)))):
            got = round(layout(bytes(length))[3]["samples"] / RATE, 3)
            lines.append(f"  air time of {length:>2} bytes: document {claimed_s} s, ours {got} s")
            if abs(got - claimed_s) > 0.0005:
                problems.append(f"§7 table: {length} bytes take {got} s here, {claimed_s} s in the document")
    return problems, lines


def main():
    global HEX, WAV
    began = time.monotonic()
    if len(sys.argv) == 3:
        HEX, WAV = (pathlib.Path(a).resolve() for a in sys.argv[1:])
    failures = []

    words = [int("".join(map(str, header_bits(length))), 2) for length in range(1, 33)]
    words += [w ^ 0xFFFFFFFF for w in words]                 # the sixth bit's half of RM(1,5)
    distance = min(bin(a ^ b).count("1") for i, a in enumerate(words) for b in words[i + 1:])
    print(f"header RM(1,5): minimum distance over all 64 codewords {distance} (document: at least 16)")
    if distance < 16:
        failures.append(f"header code distance {distance} < 16")

    impulse = convolve([1])
    first, second = impulse[0::2], impulse[1::2]
    g0 = int("".join(map(str, first)), 2)
    g1 = int("".join(map(str, second)), 2)
    print(f"convolutional code: impulse response {oct(g0)}, {oct(g1)} (document: 133, 171 octal)")
    if (g0, g1) != (0o133, 0o171):
        failures.append(f"generators {oct(g0)}, {oct(g1)} are not 133, 171 octal")

    problems, lines = document_checks()
    print("worked numbers (§7.2) and air times (§7's table):")
    print("\n".join(lines))
    failures += problems

    if not (HEX.exists() and WAV.exists()):
        failures.append(f"test vector missing: {HEX} / {WAV}")
    else:
        payload = bytes.fromhex(HEX.read_text().split()[0])
        cells, code, _, numbers = layout(payload)
        print(f"payload {len(payload)} bytes: " + ", ".join(f"{k} = {v}" for k, v in numbers.items()))
        ours = render(cells)
        vector = read_wav(WAV)
        print(f"length: ours {len(ours)} samples, vector {len(vector)}")
        if len(ours) != len(vector):
            failures.append(f"length differs: ours {len(ours)}, vector {len(vector)}")
        worst, at = worst_difference(ours, vector)
        print(f"largest difference: {worst:.2f} LSB (sample {at})")
        if worst > TOLERANCE_LSB:
            failures.append(f"samples differ by up to {worst:.1f} LSB (> {TOLERANCE_LSB})")
            theirs = cells_of(vector, len(cells) // GROUPS)
            mine = cells_of([round(FULL_SCALE * v) for v in ours], len(cells) // GROUPS)
            if mine != cells:
                failures.append("(self-check) reading our own frame back does not give our cells")
            failures.append("first stage to disagree: " + first_disagreement(cells, theirs, code, numbers))

    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    verdict = "FAIL" if failures else "PASS"
    print(f"modem beacon conformance: {verdict} ({time.monotonic() - began:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
