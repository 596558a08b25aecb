#!/usr/bin/env python3
"""zxing-cpp and zbar on a QR corpus, for `cargo bench --bench qr`.

Usage: qr_others.py DIR. For every DIR/*.jpg and *.png, one JSON line:
{"file": NAME, "zxing": [HEX...], "zxing_ms": T, "zbar": [HEX...],
"zbar_ms": T}, each reader called in this process on the decoded grey
image with its defaults (what a new user gets), timed around the call
only. zbar hands binary payloads back as text in an encoding it guessed
(ISO-8859-1 mostly, Big5 or Shift-JIS now and then) re-encoded as UTF-8;
the raw bytes and the text in each of those encodings are listed, so zbar
is credited with what it read (matching is exact, so a wrong guess
credits nothing). A reader that is not
installed is left out of each line ("zxing": null).

Needs: pip install zxing-cpp pyzbar pillow (pyzbar also needs the
system's libzbar0: apt-get install zbar-tools).
"""
import glob
import json
import os
import sys
import time

from PIL import Image

try:
    import zxingcpp
except ImportError:
    zxingcpp = None
try:
    from pyzbar import pyzbar
except ImportError:
    pyzbar = None


def zxing_read(img):
    found = zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormat.QRCode)
    return [r.bytes.hex() for r in found]


# The encodings zbar may take a binary payload for (it guesses from the
# bytes) before handing it back as UTF-8.
ZBAR_GUESSES = ("latin-1", "big5", "shift_jis", "gb18030", "euc-kr")


def zbar_read(img):
    out = []
    for r in pyzbar.decode(img, symbols=[pyzbar.ZBarSymbol.QRCODE]):
        out.append(r.data.hex())
        try:
            text = r.data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        for guess in ZBAR_GUESSES:
            try:
                out.append(text.encode(guess).hex())
            except UnicodeEncodeError:
                pass
    return out


def timed(read, img):
    started = time.perf_counter()
    codes = read(img)
    return codes, (time.perf_counter() - started) * 1e3


def main():
    folder = sys.argv[1]
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")) + glob.glob(os.path.join(folder, "*.png")))
    for path in files:
        img = Image.open(path).convert("L")
        img.load()
        line = {"file": os.path.basename(path), "zxing": None, "zxing_ms": None, "zbar": None, "zbar_ms": None}
        if zxingcpp is not None:
            line["zxing"], line["zxing_ms"] = timed(zxing_read, img)
        if pyzbar is not None:
            line["zbar"], line["zbar_ms"] = timed(zbar_read, img)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
