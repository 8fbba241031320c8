#!/usr/bin/python3
"""Writes the corpus of damaged safetensors files that check_safetensors
loads, and EXPECTED: per file, the status the load must fail with and a
piece of its message. Run from this directory; the files are checked in.
(nan.safetensors is well formed: it loads, and the trainer refuses to resume
from it.)"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import safetensors_np as stn  # noqa: E402

cases = []


def raw(name, blob, status, needle):
    with open(name + ".safetensors", "wb") as f:
        f.write(blob)
    cases.append((name, status, needle))


def header_blob(header, data=b"", pad=True, length=None):
    text = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, bytes) else header
    if pad:
        text += b" " * (-len(text) % 8)
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data


two = np.array([1.0, -2.0], np.float32).tobytes()
good = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
good_blob = header_blob(good, two)

# truncated at every length class: nothing, inside the length, inside the
# header, inside the data
raw("empty", b"", "value", "too short for the 8-byte header length")
raw("cut-in-length", good_blob[:5], "value", "too short for the 8-byte header length")
raw("cut-in-header", good_blob[:8 + 20], "value", "does not fit a file")
raw("cut-in-data", good_blob[:-3], "index", "run past the 5 bytes of data")
raw("length-only", good_blob[:8], "value", "does not fit a file")
# absurd header lengths
raw("header-101MB", struct.pack("<Q", 101_000_000) + b"{}      ", "value", "over the limit")
raw("header-2e64", b"\xff" * 8 + b"{}      ", "value", "over the limit")
# the JSON
raw("not-json", header_blob(b"{\"a\":{\"dtype\":", two), "value", "not valid JSON")
raw("not-object", header_blob([1, 2]), "value", "not a JSON object")
raw("nul-in-header", header_blob(b'{"a"\x00:1}'), "value", "not valid JSON")
raw("duplicate-name", header_blob(
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
    b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', two), "value", "not valid JSON")
raw("entry-not-object", header_blob({"a": [1]}), "value", "tensor \"a\": its header entry is not an object")
raw("unknown-field", header_blob({"a": dict(good["a"], strides=[1])}, two), "value", "unknown field \"strides\"")
raw("metadata-not-object", header_blob(dict(good, __metadata__=[1]), two), "value", "__metadata__ is not an object")
raw("metadata-number", header_blob(dict(good, __metadata__={"k": 1}), two), "value", "value of \"k\" is not a string")
# dtypes
raw("dtype-f16", header_blob({"a": dict(good["a"], dtype="F16")}, two), "dtype", "dtype \"F16\" is not one of")
raw("dtype-lower", header_blob({"a": dict(good["a"], dtype="f32")}, two), "dtype", "dtype \"f32\" is not one of")
raw("dtype-number", header_blob({"a": dict(good["a"], dtype=32)}, two), "value", "dtype missing or not a string")
# shapes
raw("shape-negative", header_blob({"a": dict(good["a"], shape=[-2])}, two), "shape", "shape entry 0 is not a non-negative integer")
raw("shape-missing", header_blob({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, two), "value", "shape missing")
raw("shape-9-dims", header_blob({"a": dict(good["a"], shape=[1] * 8 + [2])}, two), "shape", "9 dimensions")
raw("shape-huge", header_blob({"a": dict(good["a"], shape=[1 << 40, 1 << 40])}, two), "shape", "is too large")
raw("shape-vs-offsets", header_blob({"a": dict(good["a"], shape=[3])}, two), "shape", "hold 8 bytes but F32 [3] needs 12")
# offsets
raw("offsets-reversed", header_blob({"a": dict(good["a"], data_offsets=[8, 0])}, two), "index", "are not 0 <= begin <= end")
raw("offsets-three", header_blob({"a": dict(good["a"], data_offsets=[0, 4, 8])}, two), "value", "must be two integers")
raw("offsets-out-of-range", header_blob({"a": dict(good["a"], data_offsets=[4, 12])}, two), "index", "run past the 8 bytes of data")
raw("offsets-overlap", header_blob({
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, two), "index", "overlap tensor")
raw("offsets-gap", header_blob({
    "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, two), "index", "a gap of 4 bytes")
raw("trailing-bytes", header_blob(good, two + b"\0" * 4), "index", "4 bytes of data after the last tensor")
raw("bool-two", header_blob({"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02"),
    "value", "BOOL element 1 is 2")
# checksums
summed = bytearray(stn.encode({"a": np.array([1.0, -2.0], np.float32)}, checksum=True))
bad_data = bytearray(summed)
bad_data[-1] ^= 0x01
raw("checksum-data-flip", bytes(bad_data), "value", "checksum mismatch")
bad_head = bytearray(summed)
at = bytes(summed).index(b'"shape":[2]') + len('"shape":[')
bad_head[at:at + 1] = b"1"
bad_head[-4:] = b""  # keep it structurally consistent: a [1] tensor of 4 bytes
raw("checksum-header-flip", bytes(bad_head).replace(b'"data_offsets":[0,8]', b'"data_offsets":[0,4]'),
    "value", "checksum mismatch")
not_hex = bytes(summed).replace(bytes(summed)[bytes(summed).index(b'sha256":"') + 9:][:64], b"z" * 64)
raw("checksum-not-hex", not_hex, "value", "is not 64 hex digits")

# well formed: every dtype, a scalar, an empty tensor and metadata, which
# check_safetensors writes again and compares byte for byte
reference = {
    "f64": np.array([[1.5, -2.25, 0.0], [1e-300, 3.0, -0.125]], np.float64),
    "f32": np.array(0.75, np.float32),
    "bf16": np.array([0x3f80, 0xbf00, 0x4040], np.uint16),  # 1.0 -0.5 3.0
    "i64": np.array([-(1 << 40), 7], np.int64),
    "i32": np.array([[-3], [2147483647]], np.int32),
    "bool": np.array([True, False, True]),
    "empty": np.zeros((0, 2), np.float32),
}
with open("reference.safetensors", "wb") as f:
    f.write(stn.encode(reference, {"format": "test", "note": "caf\u00e9"}, checksum=True, bf16={"bf16"}))

# well formed, with a NaN: loads
with open("nan.safetensors", "wb") as f:
    f.write(stn.encode({"a": np.array([1.0, np.nan], np.float32)}, checksum=True))

with open("EXPECTED", "w") as f:
    f.write("# file<TAB>status<TAB>a piece of the message (written by make-bad-files.py)\n")
    for name, status, needle in cases:
        f.write(f"{name}.safetensors\t{status}\t{needle}\n")
