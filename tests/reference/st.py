"""st.py — a small, strict safetensors reader and writer (struct + json + numpy; no `safetensors`).

File = u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}
with an optional "__metadata__" (string -> string), then the tensor bytes. The reader checks what
netlm's reader checks: header inside the file, known dtypes, shape x dtype size = span, spans
contiguous from 0 without gaps or overlap and covering the buffer exactly, names unique.
Sharded checkpoints (model.safetensors.index.json + weight_map) are read by read_dir.
"""
import json
import os
import struct

import numpy as np

MAX_HEADER = 100 * 1000 * 1000

# dtype name -> (numpy dtype used to hold the raw bytes, size in bytes)
DTYPES = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # raw bits; bf16_to_f32 converts
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "U8": (np.dtype("u1"), 1),
    "I8": (np.dtype("i1"), 1),
}
NP_TO_ST = {"<f8": "F64", "<f4": "F32", "<f2": "F16", "<i8": "I64", "<i4": "I32", "<i2": "I16",
            "|u1": "U8", "|i1": "I8"}


class SafetensorsError(Exception):
    pass


class Tensor:
    """One tensor of a file: dtype name, shape and the raw array (BF16 as uint16 bits)."""

    __slots__ = ("name", "dtype", "shape", "raw", "begin")

    def __init__(self, name, dtype, shape, raw, begin=0):
        self.name, self.dtype, self.shape, self.raw, self.begin = name, dtype, tuple(shape), raw, begin

    def to_f32(self):
        """fp32 copy of a float tensor (F16/BF16 widened exactly)."""
        if self.dtype == "BF16":
            return bf16_bits_to_f32(self.raw)
        if self.dtype in ("F32", "F16", "F64"):
            return self.raw.astype(np.float32)
        raise SafetensorsError(f"{self.name}: {self.dtype} is not a float dtype")

    def to_numpy(self):
        """The natural numpy value: floats as stored (BF16 widened to fp32), integers as stored."""
        if self.dtype == "BF16":
            return bf16_bits_to_f32(self.raw)
        return self.raw


def bf16_bits_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """Round-to-nearest-even fp32 -> bf16 bits (NaN kept quiet), as torch's .to(bfloat16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def read(path):
    """Returns (dict name -> Tensor, metadata dict). Raises SafetensorsError on any defect."""
    with open(path, "rb") as f:
        data = f.read()
    return parse(data, path)


def parse(data, name="<buffer>"):
    if len(data) < 8:
        raise SafetensorsError(f"{name}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER:
        raise SafetensorsError(f"{name}: header of {n} bytes is too large")
    if 8 + n > len(data):
        raise SafetensorsError(f"{name}: header runs past the end of the file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{name}: header is not JSON: {e}")
    if not isinstance(header, dict):
        raise SafetensorsError(f"{name}: header is not a JSON object")
    buf = memoryview(data)[8 + n:]
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise SafetensorsError(f"{name}: __metadata__ must map strings to strings")
    spans = []
    tensors = {}
    for tname, info in header.items():
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{name}: {tname}: malformed entry")
        dt = info.get("dtype")
        if dt not in DTYPES:
            raise SafetensorsError(f"{name}: {tname}: unsupported dtype {dt!r}")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError(f"{name}: {tname}: bad shape")
        offs = info.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
                or offs[0] < 0 or offs[1] < offs[0]):
            raise SafetensorsError(f"{name}: {tname}: bad data_offsets")
        npdt, size = DTYPES[dt]
        numel = 1
        for d in shape:
            numel *= d
        if offs[1] - offs[0] != numel * size:
            raise SafetensorsError(f"{name}: {tname}: span {offs[1] - offs[0]} != {numel} x {size}")
        if offs[1] > len(buf):
            raise SafetensorsError(f"{name}: {tname}: data past the end of the file")
        raw = np.frombuffer(buf[offs[0]:offs[1]], dtype=npdt).reshape(shape)
        tensors[tname] = Tensor(tname, dt, shape, raw, offs[0])
        spans.append((offs[0], offs[1], tname))
    spans.sort()
    pos = 0
    for b, e, tname in spans:
        if b != pos:
            raise SafetensorsError(f"{name}: {tname}: gap or overlap at byte {pos}")
        pos = e
    if pos != len(buf):
        raise SafetensorsError(f"{name}: {len(buf) - pos} bytes after the last tensor")
    return tensors, meta


def write(path, tensors, metadata=None, order=None):
    """tensors: dict name -> numpy array, or name -> (st dtype name, numpy array of raw values)
    (use ("BF16", uint16 bits) for bf16). Header padded with spaces to a multiple of 8. Written to
    a temporary name and renamed. order: names in file order (default: sorted)."""
    names = list(order) if order is not None else sorted(tensors)
    if len(set(names)) != len(names) or set(names) != set(tensors):
        raise SafetensorsError("write: order must list every tensor once")
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    pos = 0
    for n in names:
        v = tensors[n]
        if isinstance(v, tuple):
            dt, arr = v
            arr = np.ascontiguousarray(arr, dtype=DTYPES[dt][0])
        else:
            arr = np.ascontiguousarray(v)
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            dt = NP_TO_ST.get(arr.dtype.str)
            if dt is None:
                raise SafetensorsError(f"write: {n}: unsupported numpy dtype {arr.dtype}")
        b = arr.tobytes()
        header[n] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_dir(model_dir):
    """A model directory's weights: model.safetensors, or model.safetensors.index.json and its
    shards. Returns dict name -> Tensor (a name in two shards is an error)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return read(single)[0]
    if not os.path.exists(index):
        raise SafetensorsError(f"{model_dir}: neither model.safetensors nor model.safetensors.index.json")
    with open(index) as f:
        idx = json.load(f)
    wm = idx.get("weight_map")
    if not isinstance(wm, dict):
        raise SafetensorsError(f"{index}: no weight_map object")
    out = {}
    for shard in sorted(set(wm.values())):
        ts, _ = read(os.path.join(model_dir, shard))
        for n, t in ts.items():
            if n in out:
                raise SafetensorsError(f"{model_dir}: {n} is in two shards")
            if wm.get(n) != shard:
                raise SafetensorsError(f"{index}: {n} found in {shard}, weight_map says {wm.get(n)}")
            out[n] = t
    missing = set(wm) - set(out)
    if missing:
        raise SafetensorsError(f"{index}: {sorted(missing)[0]} listed but not in its shard")
    return out
