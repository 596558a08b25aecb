#!/usr/bin/env python3
"""An independent implementation of docs/protocol.md, in Python.

It rebuilds every test vector from the document's rules alone (fixed seeds,
layouts, domain tags) with the `cryptography` package's Ed25519, and checks
that the document's vectors match. If this passes, a phone app in another
language can be written from the document. Run: python3 tests/conformance/protocol.py
"""
import hashlib
import pathlib
import re
import struct
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def documented_vectors():
    text = DOC.read_text()
    block = text[text.index("<!-- vectors:begin -->"):text.index("<!-- vectors:end -->")]
    return dict(re.findall(r"^([a-z_0-9]+)\s+([0-9a-f]+)$", block, re.MULTILINE))


def public(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def main():
    issuer = Ed25519PrivateKey.from_private_bytes(bytes(range(0x00, 0x20)))
    wallet = Ed25519PrivateKey.from_private_bytes(bytes(range(0x20, 0x40)))
    reader = Ed25519PrivateKey.from_private_bytes(bytes(range(0x40, 0x60)))
    wallet_key = public(wallet)

    tag = struct.unpack(">I", hashlib.sha256(b"sonotap/v1/reader-tag\0gate-1").digest()[:4])[0] or 1
    signed_credential = struct.pack(">BBBH", 1, 1, 0x01, 978) + wallet_key + struct.pack(">IIIH", 5000, 500, 1800000000, 72)
    credential = signed_credential + issuer.sign(b"sonotap/v1/credential\0" + signed_credential)
    payment = struct.pack(">IIIII", 250, 7, 1000, 1800003600, tag)
    token = credential + payment + wallet.sign(b"sonotap/v1/payment\0" + credential + payment)
    # Version 2: gate-1's beacon, and a token bound to it.
    challenge = bytes(range(0x60, 0x68))
    beacon = bytes([0xB1]) + struct.pack(">I", tag) + challenge + struct.pack(">I", 1800003590)
    binding = hashlib.sha256(b"sonotap/v2/gate-binding\0" + struct.pack(">I", tag) + challenge).digest()[:4]
    payment_v2 = struct.pack(">IIII", 250, 8, 1250, 1800003595) + binding
    signed_v2 = bytes([2]) + credential + payment_v2
    token_v2 = signed_v2 + wallet.sign(b"sonotap/v2/payment\0" + signed_v2)
    assert len(token_v2) == 200

    reader_id = b"gate-1"
    body = (b"sonotap/v1/record\0" + bytes([len(reader_id)]) + reader_id
            + struct.pack(">QQBI", 1, 1800003601, 1, 250) + bytes([len(token)]) + token + bytes(32))

    computed = {
        "issuer_seed": bytes(range(0x00, 0x20)).hex(),
        "issuer_public": public(issuer).hex(),
        "wallet_seed": bytes(range(0x20, 0x40)).hex(),
        "wallet_public": wallet_key.hex(),
        "wallet_id": hashlib.sha256(b"sonotap/v1/wallet-id\0" + wallet_key).digest()[:8].hex(),
        "reader_seed": bytes(range(0x40, 0x60)).hex(),
        "reader_public": public(reader).hex(),
        "reader_tag_gate_1": "%08x" % tag,
        "credential_signed_message": (b"sonotap/v1/credential\0" + signed_credential).hex(),
        "credential": credential.hex(),
        "credential_digest": hashlib.sha256(credential).hexdigest(),
        "payment_signed_message": (b"sonotap/v1/payment\0" + credential + payment).hex(),
        "token": token.hex(),
        "beacon": beacon.hex(),
        "gate_binding": binding.hex(),
        "payment_v2_signed_message": (b"sonotap/v2/payment\0" + signed_v2).hex(),
        "token_v2": token_v2.hex(),
        "record_body": body.hex(),
        "record_hash": hashlib.sha256(body).hexdigest(),
        "record_signature": reader.sign(body).hex(),
    }
    documented = documented_vectors()
    bad = [name for name, value in computed.items() if documented.get(name) != value]
    extra = sorted(set(documented) - set(computed))
    for name in bad:
        print(f"MISMATCH {name}", file=sys.stderr)
    for name in extra:
        print(f"UNCHECKED {name}", file=sys.stderr)
    passed = len(computed) - len(bad)
    print(f"protocol conformance (versions 1 and 2): {passed} passed, {len(bad) + len(extra)} failed")
    return 1 if bad or extra else 0


if __name__ == "__main__":
    sys.exit(main())
