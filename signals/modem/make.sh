#!/usr/bin/env bash
# Regenerates the modem corpus: every file from sonotap's own encoder and
# channel simulator with fixed seeds, so the same build gives the same files.
# Each NAME.wav has NAME.hex: the payloads a decoder must find, one per line
# (an empty .hex means none). tests/integration/signals.rs checks them.
# token-fast-48k.wav and token-robust-48k.wav are also the formats 2's test
# vectors (docs/modem.md §3b and §3c, tests/conformance/modem_v2.py and
# modem_robust_v2.py); beacon-48k.wav is the readers' beacon's (§7.2,
# tests/conformance/modem_beacon.py). Files named beacon-* hold beacons
# (`sonotap modem beacon decode` finds their .hex, `modem decode` nothing);
# the others hold payments and no beacon. The *-fast-v1 and *-robust-v1 files were made by the
# profiles' format 1, which the encoder no longer sends: they are kept, not
# regenerated, so the decoder is held to reading version-1 phones.
# Run from the repository root: bash signals/modem/make.sh
set -euo pipefail
cd "$(dirname "$0")"
S=${SONOTAP:-../../target/debug/sonotap}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The token of docs/protocol.md's test vectors, and a second, different payload.
token=$(sed -n 's/^token  *\([0-9a-f]*\)$/\1/p' ../../docs/protocol.md)
[ ${#token} -eq 398 ] || { echo "token vector not found in docs/protocol.md" >&2; exit 1; }
printf '%s' "$token" | xxd -r -p > "$tmp/token.bin"
printf 'sonotap corpus: a second payload, 52 bytes long....' > "$tmp/other.bin"

encode() { "$S" modem encode --profile "$1" --rate "$2" --out "$3" < "$4" > /dev/null; }
hexof() { xxd -p "$1" | tr -d '\n'; echo; }

encode fast 48000 token-fast-48k.wav "$tmp/token.bin"
encode robust 44100 token-robust-44k1.wav "$tmp/token.bin"
encode robust 48000 token-robust-48k.wav "$tmp/token.bin"
encode fast 48000 "$tmp/fast.wav" "$tmp/token.bin"
encode robust 48000 "$tmp/robust.wav" "$tmp/token.bin"
"$S" modem simulate "$tmp/fast.wav" --noise station --snr 5 --rt60 0.4 --drr 12 --seed 1 --out gate-station-5db-rt60-0.4s-fast.wav > /dev/null
"$S" modem simulate "$tmp/fast.wav" --noise station --snr 10 --rate 44100 --ppm 300 --seed 2 --out gate-station-10db-44k1-300ppm-fast.wav > /dev/null
"$S" modem simulate "$tmp/robust.wav" --noise station --snr -10 --seed 3 --out station-minus10db-robust.wav > /dev/null
"$S" modem simulate "$tmp/robust.wav" --noise babble --snr 5 --rt60 2 --drr 0 --seed 4 --out hall-rt60-2s-babble-5db-robust.wav > /dev/null
for f in token-fast-48k token-robust-44k1 token-robust-48k gate-station-5db-rt60-0.4s-fast gate-station-10db-44k1-300ppm-fast \
         station-minus10db-robust hall-rt60-2s-babble-5db-robust; do
  hexof "$tmp/token.bin" > "$f.hex"
done

# Two payments back to back, different profiles, in one capture.
encode robust 48000 "$tmp/other.wav" "$tmp/other.bin"
python3 - "$tmp/fast.wav" "$tmp/other.wav" "$tmp/both.wav" <<'PY'
import sys, wave
frames = []
for name in sys.argv[1:3]:
    w = wave.open(name)
    frames.append(w.readframes(w.getnframes()))
gap = bytes(2 * 24000)
out = wave.open(sys.argv[3], "wb")
out.setnchannels(1); out.setsampwidth(2); out.setframerate(48000)
out.writeframes(frames[0] + gap + frames[1])
PY
"$S" modem simulate "$tmp/both.wav" --noise pink --snr 10 --seed 5 --out two-payments-pink-10db.wav > /dev/null
{ hexof "$tmp/token.bin"; hexof "$tmp/other.bin"; } > two-payments-pink-10db.hex

# A reader's beacon (version, tag, challenge, time): the test vector, and as a
# phone 1.5 m from the gate hears it in a station.
beacon=01a1b2c3d40011223344556677650a1b2c
"$S" modem beacon encode --hex "$beacon" --rate 48000 --out beacon-48k.wav > /dev/null
"$S" modem simulate beacon-48k.wav --noise station --snr 3 --rt60 0.8 --drr 8 --rate 44100 --ppm 300 --seed 7 --out beacon-station-3db-rt60-0.8s-44k1-300ppm.wav > /dev/null
for f in beacon-48k beacon-station-3db-rt60-0.8s-44k1-300ppm; do echo "$beacon" > "$f.hex"; done

# Ten seconds of station noise and music with no transmission: nothing to find.
python3 - "$tmp/quiet.wav" <<'PY'
import sys, wave, math
out = wave.open(sys.argv[1], "wb")
out.setnchannels(1); out.setsampwidth(2); out.setframerate(48000)
# A faint 440 Hz tone, so the simulator has a signal to scale the noise to.
out.writeframes(b"".join(int(300 * math.sin(2 * math.pi * 440 * i / 48000)).to_bytes(2, "little", signed=True) for i in range(480000)))
PY
"$S" modem simulate "$tmp/quiet.wav" --noise station --snr -20 --seed 6 --out no-payment-station-noise.wav > /dev/null
: > no-payment-station-noise.hex
ls -l *.wav | awk '{s+=$5} END {print NR " files, " s " bytes"}'
