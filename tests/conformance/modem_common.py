"""What both format-2 conformance scripts build the same way, from docs/modem.md
alone: §2's hash, §3b's Reed–Muller header bits, the 802.11n LDPC tables read
from the document and §3b's encoding steps (written once for any of its block
row counts: 12 for rate 1/2, 8 for rate 2/3, §3c), the code stream of §3b, and
reading a test vector. Standard library only.
"""
import pathlib
import struct
import wave
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "modem.md"

RATE = 48000
Z, BLOCK_COLS = 81, 24               # 1944-bit codewords, 81 × 81 blocks
FULL_SCALE = 32767                   # 16-bit sample = round(32767·x)


def hash2(a, b):
    """§2's hash, in 32-bit wrapping arithmetic."""
    m = 0xFFFFFFFF
    x = ((a * 0x9E3779B1) & m) ^ ((b * 0x85EBCA77) & m) ^ 0x51515151
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    x ^= x >> 16
    return x


def header_bits(length):
    """§3b: RM(1,7) of len − 1, 128 bits."""
    v = length - 1
    return [(bin((v & 0x7F) & j).count("1") & 1) ^ (v >> 7) for j in range(128)]


def bits_of(data):
    """Bytes, most significant bit first."""
    return [(byte >> (7 - b)) & 1 for byte in data for b in range(8)]


def base_matrix(heading, until, rows):
    """The LDPC table in the first code block after `heading` (and before
    `until`), `rows` × 24."""
    text = DOC.read_text()
    section = text[text.index(heading):text.index(until)]
    block = section[section.index("```") + 3:]
    block = block[:block.index("```")]
    table = [[int(v) for v in line.split()] for line in block.strip().splitlines()]
    assert len(table) == rows and all(len(r) == BLOCK_COLS for r in table), \
        f"LDPC table: expected {rows} × {BLOCK_COLS}"
    return table


def info_bits(table):
    """Information bits of a codeword of the code `table` describes."""
    return (BLOCK_COLS - len(table)) * Z


def shift(block, s):
    """(P^s·x)[r] = x[(r + s) mod 81]."""
    return [block[(r + s) % Z] for r in range(Z)]


def xor(a, b):
    return [x ^ y for x, y in zip(a, b)]


def ldpc_parity(info, table):
    """§3b's encoding steps, as written (§3c: the same for 8 block rows):
    λ_i, p_0 = Σ λ_i, p_1 = λ_0 ⊕ P^1·p_0, p_{i+1} = λ_i ⊕ p_i with ⊕ p_0 in
    the middle block row (6 of 12, 4 of 8)."""
    rows = len(table)
    cols = BLOCK_COLS - rows
    u = [info[Z * j:Z * (j + 1)] for j in range(cols)]
    lam = []
    for i in range(rows):
        acc = [0] * Z
        for j in range(cols):
            if table[i][j] >= 0:
                acc = xor(acc, shift(u[j], table[i][j]))
        lam.append(acc)
    p = [None] * rows
    p[0] = [0] * Z
    for li in lam:
        p[0] = xor(p[0], li)
    p[1] = xor(lam[0], shift(p[0], 1))
    for i in range(1, rows - 1):
        p[i + 1] = xor(lam[i], p[i])
        if i == rows // 2:
            p[i + 1] = xor(p[i + 1], p[0])
    return [bit for block in p for bit in block]


def parity_checks_failed(codeword, table):
    """H·c over the whole matrix (built from the table, not from the
    encoder): the number of checks that fail."""
    failed = 0
    for i in range(len(table)):
        for r in range(Z):
            acc = 0
            for col in range(BLOCK_COLS):
                s = table[i][col]
                if s >= 0:
                    acc ^= codeword[Z * col + (r + s) % Z]
            failed += acc
    return failed


def code_stream(payload, table):
    """§3b's code stream: payload ‖ CRC-32 in as few shortened codewords as
    hold it; returns the stream, the whole codewords and each one's share."""
    info_max = info_bits(table)
    body = payload + struct.pack(">I", zlib.crc32(payload) & 0xFFFFFFFF)
    bits = bits_of(body)
    total = len(bits)                           # B
    c = -(-total // info_max)
    sizes = [total // c + (1 if i < total % c else 0) for i in range(c)]
    stream, codewords, pos = [], [], 0
    for k in sizes:
        info = bits[pos:pos + k] + [0] * (info_max - k)
        pos += k
        parity = ldpc_parity(info, table)
        codewords.append(info + parity)
        stream += info[:k] + parity
    return stream, codewords, sizes


def read_wav(path):
    """A vector's 16-bit samples, as integers."""
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE), \
            f"{path.name}: expected 16-bit mono at {RATE} Hz"
        raw = w.readframes(w.getnframes())
    return list(struct.unpack("<%dh" % (len(raw) // 2), raw))


def worst_difference(frame, vector):
    """Largest |32767·x − sample|, in LSB, and where."""
    worst, at = -1.0, -1
    for i in range(min(len(frame), len(vector))):
        d = abs(FULL_SCALE * frame[i] - vector[i])
        if d > worst:
            worst, at = d, i
    return (worst, at) if at >= 0 else (float("inf"), -1)
