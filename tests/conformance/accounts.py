#!/usr/bin/env python3
"""An independent implementation of docs/accounts.md §3, in Python.

It rebuilds every test vector of the document from its rules alone (fixed
seeds, the code alphabet, layouts, domain tags) with the `cryptography`
package's Ed25519, checks that the document's vectors match, and checks the
decoding rules with its own parsers: the documented messages parse back to
the fields they were built from, and a trailing byte, every truncation, a
non-canonical code, an unknown code and over 100 entries are refused. If
this passes, a phone app in another language can be written from the
document. Run: python3 tests/conformance/accounts.py
(`SONOTAP_PRINT_VECTORS=1` also prints the vectors it computes).
"""
import hashlib
import os
import pathlib
import re
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "accounts.md"

ENROL = b"sonotap/v1/enrol\0"
RENEW = b"sonotap/v1/renew\0"
STATEMENT_REQUEST = b"sonotap/v1/statement-request\0"
RENEWED = b"sonotap/v1/renewed\0"
STATEMENT = b"sonotap/v1/statement\0"
RENEWAL = b"sonotap/v1/renewal\0"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
PAGE = 100
WINDOW_MS = 300_000


def documented_vectors():
    text = DOC.read_text()
    block = text[text.index("<!-- vectors:begin -->"):text.index("<!-- vectors:end -->")]
    return dict(re.findall(r"^([a-z_0-9]+)\s+([0-9a-f]+)$", block, re.MULTILINE))


def public(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def str8(data):
    assert len(data) <= 255
    return bytes([len(data)]) + data


# --- the enrolment code ---------------------------------------------------

def enrol_code(random):
    assert len(random) == 10
    n = int.from_bytes(random, "big")
    return "".join(ALPHABET[(n >> (5 * (15 - i))) & 31] for i in range(16))


def normalise(typed):
    code = "".join(c for c in typed if c not in "- ")
    code = "".join(c.upper() if c.isascii() else c for c in code)
    if len(code) != 16:
        raise ValueError(f"{len(code)} letters")
    if any(c not in ALPHABET for c in code):
        raise ValueError("a letter outside the alphabet")
    return code


# --- encoders -------------------------------------------------------------

def request(wallet, kind, time_ms, nonce, code=None, before=None):
    domain, extra = {
        "enrol": (ENROL, lambda: str8(code.encode())),
        "renew": (RENEW, lambda: b""),
        "statement": (STATEMENT_REQUEST, lambda: struct.pack(">Q", before)),
    }[kind]
    signed = domain + public(wallet) + struct.pack(">Q", time_ms) + nonce + extra()
    return signed + wallet.sign(signed)


def renewal_note(issuer, key_id, credential, highest, at):
    signed = (RENEWAL + hashlib.sha256(credential).digest() + struct.pack(">IQB", highest, at, key_id)
              + public(issuer))
    return signed + issuer.sign(signed)


def statement(issuer, key_id, nonce, wallet_id, at, state, currency, balance, credit_line, exposure,
              next_before, entries):
    out = (STATEMENT + nonce + wallet_id
           + struct.pack(">QBHqQQQB", at, state, currency, balance, credit_line, exposure, next_before,
                         len(entries)))
    for id_, kind, amount, entry_at, source, seq in entries:
        out += struct.pack(">QBqQ", id_, kind, amount, entry_at) + str8(source.encode()) + struct.pack(">Q", seq)
    out += bytes([key_id])
    return out + issuer.sign(out)


# --- parsers: canonical, or ValueError ------------------------------------

class Reader:
    def __init__(self, data, domain):
        if not data.startswith(domain):
            raise ValueError("wrong domain tag")
        self.data, self.at = data, len(domain)

    def take(self, n):
        if self.at + n > len(self.data):
            raise ValueError("truncated")
        part = self.data[self.at:self.at + n]
        self.at += n
        return part

    def unpack(self, fmt):
        return struct.unpack(">" + fmt, self.take(struct.calcsize(">" + fmt)))

    def str8(self):
        return self.take(self.take(1)[0]).decode("utf-8")

    def end(self):
        if self.at != len(self.data):
            raise ValueError("trailing bytes")


def parse_request(data):
    domain = next((d for d in (ENROL, RENEW, STATEMENT_REQUEST) if data.startswith(d)), None)
    if domain is None:
        raise ValueError("wrong domain tag")
    r = Reader(data, domain)
    key = r.take(32)
    (time_ms,) = r.unpack("Q")
    nonce = r.take(16)
    fields = {"key": key, "time_ms": time_ms, "nonce": nonce}
    if domain == ENROL:
        code = r.str8()
        if normalise(code) != code:
            raise ValueError("code not canonical")
        fields.update(kind="enrol", code=code)
    elif domain == RENEW:
        fields.update(kind="renew")
    else:
        (fields["before"],) = r.unpack("Q")
        fields.update(kind="statement")
    signed_len = r.at
    signature = r.take(64)
    r.end()
    fields["signed"], fields["signature"] = data[:signed_len], signature
    return fields


def verify_request(fields, now_ms):
    if abs(fields["time_ms"] - now_ms) > WINDOW_MS:
        raise ValueError("outside the window")
    Ed25519PublicKey.from_public_bytes(fields["key"]).verify(fields["signature"], fields["signed"])


def parse_note(data):
    r = Reader(data, RENEWAL)
    digest = r.take(32)
    highest, at, key_id = r.unpack("IQB")
    issuer_key = r.take(32)
    signed_len = r.at
    signature = r.take(64)
    r.end()
    return {"digest": digest, "highest": highest, "at": at, "key_id": key_id, "issuer_key": issuer_key,
            "signed": data[:signed_len], "signature": signature}


def parse_renewed(data):
    r = Reader(data, RENEWED)
    credential = r.take(115)
    note = parse_note(r.take(160))
    r.end()
    version, key_id, scope, currency = struct.unpack(">BBBH", credential[:5])
    if version != 1 or not (scope in (1, 2) or scope >= 0x80) or not 1 <= currency <= 999:
        raise ValueError("not a credential")
    return {"credential": credential, "wallet_key": credential[5:37], "key_id": key_id, "note": note}


def verify_renewed(fields, wallet_key, trusted):
    note, credential = fields["note"], fields["credential"]
    if fields["wallet_key"] != wallet_key:
        raise ValueError("another wallet")
    if note["digest"] != hashlib.sha256(credential).digest() or note["key_id"] != fields["key_id"]:
        raise ValueError("another credential")
    key = Ed25519PublicKey.from_public_bytes(note["issuer_key"])
    key.verify(credential[51:], b"sonotap/v1/credential\0" + credential[:51])
    key.verify(note["signature"], note["signed"])
    if trusted and trusted.get(note["key_id"]) != note["issuer_key"]:
        raise ValueError("not a trusted issuer key")


def parse_statement(data):
    r = Reader(data, STATEMENT)
    nonce = r.take(16)
    wallet_id = r.take(8)
    at, state, currency, balance, credit_line, exposure, next_before, count = r.unpack("QBHqQQQB")
    if state not in (1, 2, 3):
        raise ValueError("unknown state")
    if count > PAGE:
        raise ValueError("over 100 entries")
    entries = []
    for _ in range(count):
        id_, kind, amount, entry_at = r.unpack("QBqQ")
        if kind not in (1, 2, 3, 4):
            raise ValueError("unknown entry kind")
        source = r.str8()
        (seq,) = r.unpack("Q")
        entries.append((id_, kind, amount, entry_at, source, seq))
    (key_id,) = r.unpack("B")
    signed_len = r.at
    signature = r.take(64)
    r.end()
    return {"nonce": nonce, "wallet_id": wallet_id, "at": at, "state": state, "currency": currency,
            "balance": balance, "credit_line": credit_line, "exposure": exposure,
            "next_before": next_before, "entries": entries, "key_id": key_id,
            "signed": data[:signed_len], "signature": signature}


def verify_statement(fields, nonce, wallet_id, trusted):
    key = trusted.get(fields["key_id"])
    if key is None:
        raise ValueError("untrusted key id")
    Ed25519PublicKey.from_public_bytes(key).verify(fields["signature"], fields["signed"])
    if fields["nonce"] != nonce or fields["wallet_id"] != wallet_id:
        raise ValueError("another request's statement")


def refused(parse, data):
    try:
        parse(data)
    except (ValueError, UnicodeDecodeError, InvalidSignature):
        return True
    return False


def main():
    issuer = Ed25519PrivateKey.from_private_bytes(bytes(range(0x00, 0x20)))
    wallet = Ed25519PrivateKey.from_private_bytes(bytes(range(0x20, 0x40)))
    wallet_key = public(wallet)
    wallet_id = hashlib.sha256(b"sonotap/v1/wallet-id\0" + wallet_key).digest()[:8]
    time_ms = 1800000000000
    nonce = bytes(range(0x70, 0x80))
    random = bytes(range(0xA0, 0xAA))
    code = enrol_code(random)

    signed_credential = struct.pack(">BBBH", 1, 1, 0x01, 978) + wallet_key + struct.pack(">IIIH", 5000, 500, 1800000000, 72)
    credential = signed_credential + issuer.sign(b"sonotap/v1/credential\0" + signed_credential)
    note = renewal_note(issuer, 1, credential, 7, 1800000000)
    entries = [
        (3, 3, 250, 1799996460, "gate-1", 42),
        (2, 2, -250, 1799996400, "gate-1", 41),
        (1, 1, 2000, 1799900000, "TOPUP-0001", 0),
    ]
    the_statement = statement(issuer, 1, nonce, wallet_id, 1800000000, 1, 978, 2000, 1000, 5000, 0, entries)

    computed = {
        "issuer_public": public(issuer).hex(),
        "wallet_public": wallet_key.hex(),
        "wallet_id": wallet_id.hex(),
        "nonce": nonce.hex(),
        "enrol_random": random.hex(),
        "enrol_code_ascii": code.encode().hex(),
        "enrol_request": request(wallet, "enrol", time_ms, nonce, code=code).hex(),
        "renew_request": request(wallet, "renew", time_ms, nonce).hex(),
        "statement_request": request(wallet, "statement", time_ms, nonce, before=0).hex(),
        "credential": credential.hex(),
        "credential_digest": hashlib.sha256(credential).hexdigest(),
        "renewal_note": note.hex(),
        "renewed": (RENEWED + credential + note).hex(),
        "statement": the_statement.hex(),
    }
    if os.environ.get("SONOTAP_PRINT_VECTORS"):
        for name, value in computed.items():
            print(f"{name:<26} {value}")
    documented = documented_vectors()
    failures = [f"MISMATCH {name}" for name, value in computed.items() if documented.get(name) != value]
    failures += [f"UNCHECKED {name}" for name in sorted(set(documented) - set(computed))]

    # The decoding rules, by this file's own parsers, on the bytes it built
    # (the documented ones, when the vectors above match).
    checks = 0

    def check(ok, what):
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(f"RULE {what}")

    trusted = {1: public(issuer)}
    doc = {name: bytes.fromhex(value) for name, value in computed.items()}
    messages = [(name, parse_request) for name in ("enrol_request", "renew_request", "statement_request")]
    messages += [("renewed", parse_renewed), ("statement", parse_statement)]
    for name, parse in messages:
        data = doc[name]
        check(not refused(parse, data), f"{name} parses")
        check(refused(parse, data + b"\0"), f"{name} with a trailing byte is refused")
        check(all(refused(parse, data[:cut]) for cut in range(len(data))), f"every truncation of {name} is refused")
    for name, kind, length in [("enrol_request", "enrol", 154), ("renew_request", "renew", 137),
                               ("statement_request", "statement", 157)]:
        fields = parse_request(doc[name])
        check(len(doc[name]) == length, f"{name} is {length} bytes")
        check((fields["kind"], fields["key"], fields["time_ms"], fields["nonce"]) == (kind, wallet_key, time_ms, nonce),
              f"{name} fields")
        check(not refused(lambda f: verify_request(f, time_ms + WINDOW_MS), fields), f"{name} verifies")
        check(refused(lambda f: verify_request(f, time_ms + WINDOW_MS + 1), fields), f"{name} outside the window")
    check(parse_request(doc["enrol_request"])["code"] == code, "the code parses back")
    check(parse_request(doc["statement_request"])["before"] == 0, "before parses back")

    # A signature of one kind does not hold under another kind's tag.
    renew = doc["renew_request"]
    relabelled = STATEMENT_REQUEST + renew[len(RENEW):-64] + bytes(8) + renew[-64:]
    check(refused(lambda d: verify_request(parse_request(d), time_ms), relabelled), "a relabelled request fails")

    # Codes: what a person types, and what the wire refuses.
    check(normalise("ucq2-fi5e uwtk-pkfj") == code, "a typed code normalises")
    for typed in ["ucq2-fi5e-uwtk-pkf", "ucq2-fi5e-uwtk-pkfjq", "ucq2-fi5e-uwtk-pkf0", "ucq2-fi5e-uwtk-pkf1",
                  "ucq2-fi5e-uwtk-pkf8", "ucq2-fi5e-uwtk-pkf9"]:
        check(refused(normalise, typed), f"{typed!r} is refused")
    enrol = doc["enrol_request"]
    at = len(ENROL) + 32 + 8 + 16
    for bad in [code.lower(), "-".join(code[i:i + 4] for i in range(0, 16, 4))]:
        data = enrol[:at] + str8(bad.encode()) + enrol[at + 17:]
        check(refused(parse_request, data), f"the code {bad!r} is refused on the wire")

    renewed = parse_renewed(doc["renewed"])
    check(len(doc["renewed"]) == 294 and len(doc["renewal_note"]) == 160, "renewal sizes")
    check(not refused(lambda f: verify_renewed(f, wallet_key, trusted), renewed), "renewed verifies")
    check(not refused(lambda f: verify_renewed(f, wallet_key, {}), renewed), "a first renewal verifies")
    check(refused(lambda f: verify_renewed(f, bytes(32), trusted), renewed), "renewed for another wallet")
    check(refused(lambda f: verify_renewed(f, wallet_key, {7: public(issuer)}), renewed), "renewed under an untrusted id")

    the_statement = parse_statement(doc["statement"])
    check(the_statement["entries"] == entries and the_statement["balance"] == 2000, "the statement parses back")
    check(sum(e[2] for e in entries) == the_statement["balance"], "the page sums to the balance")
    check(not refused(lambda f: verify_statement(f, nonce, wallet_id, trusted), the_statement), "the statement verifies")
    check(refused(lambda f: verify_statement(f, bytes(16), wallet_id, trusted), the_statement), "another nonce")
    check(refused(lambda f: verify_statement(f, nonce, bytes(8), trusted), the_statement), "another wallet")
    check(refused(lambda f: verify_statement(f, nonce, wallet_id, {2: public(issuer)}), the_statement), "untrusted key")
    count_at = len(STATEMENT) + 16 + 8 + 8 + 1 + 2 + 8 * 4
    state_at = len(STATEMENT) + 16 + 8 + 8
    for at, value, what in [(count_at, 101, "101 entries"), (state_at, 4, "state 4"), (count_at + 9, 5, "kind 5")]:
        data = bytearray(doc["statement"])
        data[at] = value
        check(refused(parse_statement, bytes(data)), f"{what} is refused")
    big = statement(issuer, 1, nonce, wallet_id, 0, 1, 978, 0, 0, 0, 0, [(1, 1, 1, 0, "", 0)] * PAGE)
    check(not refused(parse_statement, big), "100 entries parse")

    for failure in failures:
        print(failure, file=sys.stderr)
    total = len(computed) + checks
    print(f"accounts conformance: {total - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
