"""safetensors files, read without trusting them: the raw header is checked first (its length against the
file's size, its JSON, every tensor's dtype, shape and byte range), then every tensor's name, shape and dtype
against the model, all before any tensor is read; a mismatch names the file and the tensor. A pickle posing as a
safetensors file is refused, never unpickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ctxlm.errors import UserError

MAX_HEADER_BYTES = 100_000_000  # a safetensors header is JSON of names, dtypes and shapes: kilobytes, not 100 MB

# safetensors dtype -> (bytes per element, torch dtype name)
SAFETENSORS_DTYPES = {
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"), "F8_E5M2": (1, "float8_e5m2"),
    "F8_E4M3": (1, "float8_e4m3fn"), "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"),
    "BF16": (2, "bfloat16"), "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
}


def check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise `UserError` naming the first tensor that is missing, unexpected, or of the wrong shape."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name in sorted(expected.keys() - shapes.keys()):
        raise UserError(f"{source}: tensor {name!r} is missing")
    for name in sorted(shapes.keys() - expected.keys()):
        kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__  # or a head
        raise UserError(f"{source}: unexpected tensor {name!r} for {kind!r}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise UserError(f"{source}: tensor {name!r} has shape {tuple(shapes[name])}, the config expects {shape}")


def check_dtypes(model: nn.Module, dtypes: dict[str, torch.dtype], source: str) -> None:
    """Raise `UserError` naming the first tensor whose dtype the model's cannot take: floating-point tensors are
    cast to the model's precision (fp16/bf16 weights into an fp32 model), anything else must match exactly."""
    for name, want in model.state_dict().items():
        have = dtypes.get(name)
        if have is None or have == want.dtype or (have.is_floating_point and want.dtype.is_floating_point):
            continue
        raise UserError(f"{source}: tensor {name!r} is {str(have).removeprefix('torch.')} in the file, the model "
                        f"expects {str(want.dtype).removeprefix('torch.')} (only floating-point precisions convert)")


def load_weights(model: nn.Module, weights: Path) -> None:
    """Fill `model` from a safetensors file after checking every tensor's name, shape and dtype against it."""
    model.load_state_dict(read_weights(model, weights))


def read_weights(model: nn.Module, weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, in the model's dtypes, after checking the file's raw header and every
    tensor's name, shape and dtype against `model` (all from the header, before any tensor is read)."""
    weights = Path(weights)
    header = read_safetensors_header(weights)
    check_shapes(model, {name: shape for name, (_, shape) in header.items()}, str(weights))
    check_dtypes(model, {name: dtype for name, (dtype, _) in header.items()}, str(weights))
    expected = model.state_dict()
    try:
        with safe_open(weights, framework="pt") as f:
            names = f.keys()  # safe_open is not iterable itself
            state = {name: f.get_tensor(name).to(expected[name].dtype) for name in names}
    except SafetensorError as err:
        raise UserError(f"{weights}: not a readable safetensors file, truncated or corrupt ({err})") from None
    return state


def read_safetensors_header(file: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Every tensor's dtype and shape in a safetensors file, from its raw header, after checking it: the 8-byte
    little-endian header length against the file's size and `MAX_HEADER_BYTES`, the JSON, each tensor's dtype,
    shape and data offsets (inside the file, the size that shape x dtype needs, no gap nor overlap). Reads the
    header alone: a malformed or hostile file is refused (`UserError` naming it, and the tensor) before any
    tensor memory is allocated. A pickle posing as one is recognised and refused, never unpickled."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{file}: missing (a model folder holds config.json + model.safetensors)")
    size = file.stat().st_size
    with open(file, "rb") as f:
        start = f.read(8)
        refuse_pickle(file, start + f.read(8))
        if len(start) < 8:
            raise UserError(f"{file}: truncated, {size} bytes (a safetensors file starts with an 8-byte header "
                            "length)")
        length = int.from_bytes(start, "little")
        if length > MAX_HEADER_BYTES:
            raise UserError(f"{file}: not a safetensors file, or corrupt: its header length field says {length} "
                            f"bytes (more than {MAX_HEADER_BYTES})")
        if 8 + length > size:
            raise UserError(f"{file}: truncated or corrupt: its header length field says {length} bytes, the whole "
                            f"file has {size}")
        f.seek(8)
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{file}: corrupt safetensors header (not JSON: {err})") from None
    if not isinstance(header, dict):
        raise UserError(f"{file}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    data_size = size - 8 - length
    tensors, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise UserError(f"{file}: corrupt safetensors header (__metadata__ is not a string map)")
            continue
        tensors[name] = _check_entry(file, name, info, data_size)
        spans.append((info["data_offsets"][0], info["data_offsets"][1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise UserError(f"{file}: tensor {name!r}: its bytes [{begin}, {stop}) "
                            f"{'overlap another tensor' if begin < end else 'leave a gap after the previous one'}")
        end = stop
    if end != data_size:
        raise UserError(f"{file}: corrupt: the tensors' data ends at byte {end} of a {data_size}-byte data section")
    return tensors


def _check_entry(file: Path, name: str, info, data_size: int) -> tuple[torch.dtype, tuple[int, ...]]:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise UserError(f"{file}: tensor {name!r}: corrupt header entry (expected dtype, shape, data_offsets)")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES or getattr(torch, SAFETENSORS_DTYPES[dtype][1], None) is None:
        raise UserError(f"{file}: tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise UserError(f"{file}: tensor {name!r}: corrupt shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise UserError(f"{file}: tensor {name!r}: corrupt data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise UserError(f"{file}: tensor {name!r}: its data_offsets [{begin}, {end}] lie beyond the end of the "
                        f"file (the data section has {data_size} bytes): truncated or corrupt")
    itemsize, torch_name = SAFETENSORS_DTYPES[dtype]
    needed = math.prod(shape) * itemsize
    if end - begin != needed:
        raise UserError(f"{file}: tensor {name!r}: shape {tuple(shape)} of {dtype} needs {needed} bytes, its "
                        f"data_offsets span {end - begin}")
    return getattr(torch, torch_name), tuple(shape)


def refuse_pickle(file: Path, start: bytes) -> None:
    """Raise a `UserError` explaining the refusal when a file's first bytes are those of a pickle (protocol 2+)
    or of `torch.save`'s zip of pickles: ctxlm never unpickles weights, since a pickle can run any code."""
    if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "a Python pickle"
    elif start[:4] == b"PK\x03\x04":
        kind = "a zip archive, as torch.save writes (a pickle inside)"
    else:
        return
    raise UserError(f"{file}: {kind}, not a safetensors file: ctxlm will not unpickle it, since a pickle can run "
                    "any code. To convert it safely, load its tensors alone and re-save them: "
                    "safetensors.torch.save_file(torch.load(FILE, weights_only=True), 'model.safetensors') "
                    "(weights_only refuses anything but tensors), or get the model's published model.safetensors")
