"""safetensors_np — an independent reader and writer of the safetensors
format, from its published description, with only the standard library and
numpy. The tests use it to check what moelab writes and to give moelab files
written by another program.

    tensors, metadata = read("model.safetensors")     # dict name -> ndarray
    write("out.safetensors", {"a": np.zeros((2, 3), np.float32)}, {"k": "v"})

moelab's checksum ("moelab.checksum": "sha256" and "moelab.sha256" in
__metadata__: SHA-256 of the whole file with those 64 hex digits replaced by
'0') is checked by read() when present, and added by write(checksum=True).
"""
import hashlib
import json
import struct

import numpy as np

CHECKSUM_KEY = "moelab.sha256"
# bfloat16 has no numpy dtype: it travels as its raw uint16 bits.
DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "BF16": np.dtype("<u2"),
          "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "BOOL": np.dtype("bool")}


def read(path):
    """The tensors (name -> ndarray; BF16 as uint16 bits) and the metadata."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > 100_000_000 or 8 + n > len(blob):
        raise ValueError(f"{path}: bad header length {n}")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], name) for name, e in header.items())
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError(f"{path}: {name}: gap or overlap at {begin}")
        pos = end
    if pos != len(data):
        raise ValueError(f"{path}: data does not end at the end of the file")
    out = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        dt = DTYPES[e["dtype"]]
        arr = np.frombuffer(data[begin:end], dtype=dt).reshape(e["shape"])
        out[name] = arr.copy()
    if CHECKSUM_KEY in meta:
        digits = meta[CHECKSUM_KEY].encode("ascii")
        at = blob.index(b'"' + CHECKSUM_KEY.encode() + b'":"' + digits + b'"')
        at += len(CHECKSUM_KEY) + 4
        zeroed = blob[:at] + b"0" * 64 + blob[at + 64:]
        if hashlib.sha256(zeroed).hexdigest() != meta[CHECKSUM_KEY]:
            raise ValueError(f"{path}: checksum mismatch")
    return out, meta


def dtype_name(arr, bf16=False):
    if bf16:
        return "BF16"
    for name, dt in DTYPES.items():
        if name != "BF16" and arr.dtype == dt:
            return name
    raise ValueError(f"no safetensors dtype for {arr.dtype}")


def encode(tensors, metadata=None, checksum=False, bf16=()):
    """The bytes of a file holding TENSORS (in order) and METADATA; names in
    BF16 are uint16 arrays of bfloat16 bits."""
    header, chunks, pos = {}, [], 0
    meta = dict(metadata or {})
    if checksum:
        meta["moelab.checksum"] = "sha256"
        meta[CHECKSUM_KEY] = "0" * 64
    if meta:
        header["__metadata__"] = meta
    for name, arr in tensors.items():
        arr = np.array(arr, order="C", copy=True)  # (ascontiguousarray makes 0-d 1-d)
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype_name(arr, name in bf16), "shape": list(arr.shape),
                        "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    blob = struct.pack("<Q", len(text)) + text + b"".join(chunks)
    if checksum:
        digest = hashlib.sha256(blob).hexdigest().encode()
        slot = b'"' + CHECKSUM_KEY.encode() + b'":"' + b"0" * 64
        at = blob.index(slot) + len(slot) - 64
        blob = blob[:at] + digest + blob[at + 64:]
    return blob


def write(path, tensors, metadata=None, checksum=False, bf16=()):
    with open(path, "wb") as f:
        f.write(encode(tensors, metadata, checksum, bf16))
