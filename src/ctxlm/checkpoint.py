"""The one checkpoint format: a folder with config.json + model.safetensors + tokenizer files.

safetensors holds tensors only, so loading a checkpoint never runs code. The file's raw header is checked first
(its length against the file's size, its JSON, every tensor's dtype, shape and byte range), then every tensor's
name, shape and dtype against the model the config describes, all before any tensor is read; a mismatch names
the file and the tensor. A pickle posing as a checkpoint is refused, never unpickled.

Writing is atomic: files go to a temporary sibling folder `.NAME.tmp.HOST.PID.RANDOM`, flushed to disk, which
then takes the place of the folder in one atomic exchange (Linux), so that at every moment the folder holds the
previous checkpoint or the new one, never a mix nor nothing. Where the exchange is unavailable the old folder is
first renamed to `.NAME.old`; a crash between that rename and the next leaves no folder, and readers
(`load_checkpoint`, `resolve`) fall back to `.NAME.old`, which the next save (or `recover`) puts back. A save
killed midway leaves its temporary folder, which loading ignores and the next save on this host removes.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ctxlm.config import load_config
from ctxlm.errors import UserError
from ctxlm.models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"  # ctxlm.train.STATE_FILE: a training checkpoint, resumable
MAX_HEADER_BYTES = 100_000_000  # a safetensors header is JSON of names, dtypes and shapes: kilobytes, not 100 MB

# safetensors dtype -> (bytes per element, torch dtype name)
SAFETENSORS_DTYPES = {
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"), "F8_E5M2": (1, "float8_e5m2"),
    "F8_E4M3": (1, "float8_e4m3fn"), "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"),
    "BF16": (2, "bfloat16"), "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
}

_ACTIVE_TEMPS: set[Path] = set()  # this process's saves under way (their temporary folders are not stale)


# -- writing ----------------------------------------------------------------------------------------------------
def save(model: nn.Module, path: str | Path, *, extra: Callable[[Path], None] | None = None,
         state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model (and its tokenizer, if it has one) to the folder `path`, atomically.

    Files go to a temporary sibling folder first, flushed to disk, which then replaces `path` atomically: an
    interrupted save leaves the old checkpoint or the new one, never a mix. `extra(folder)` may add files
    (training state). `state`: the weights to write instead of `model.state_dict()`, e.g. a sharded model's
    gathered whole. A full disk raises a `UserError` that says the previous checkpoint is intact.
    `path` may be missing, an empty folder or a checkpoint: any other folder is refused, never replaced.
    """
    path = Path(path)
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)  # a save interrupted between its two renames left the last good checkpoint at .NAME.old
    _check_replaceable(target, path)
    _remove_stale_temps(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(err.errno, target, path) from None
        raise
    _ACTIVE_TEMPS.add(tmp)
    try:
        try:
            model.config.save(tmp / CONFIG_FILE)
            weights = model.state_dict() if state is None else state
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS_FILE,
                      metadata={"format": "pt", "model_type": model.config.model_type})
            if getattr(model, "tokenizer", None) is not None:
                model.tokenizer.save(tmp)
            if extra is not None:
                extra(tmp)
            _fsync_tree(tmp)  # on disk before the rename makes it the checkpoint (a power cut cannot empty it)
        except Exception as err:
            code = _os_errno(err)
            if code in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(code, target, path) from None
            raise
        _swap_in(tmp, target)
    finally:
        _ACTIVE_TEMPS.discard(tmp)
        _remove(tmp)  # the partial new folder, or (after an exchange) the previous checkpoint
    return path


def _check_replaceable(target: Path, shown: Path) -> None:
    if not os.path.lexists(target):
        return
    if target.is_dir() and (is_checkpoint(target) or not any(target.iterdir())):
        return
    raise UserError(f"{shown}: exists and is not a ctxlm checkpoint (config.json + model.safetensors); refusing "
                    "to replace it: choose a new folder, or remove this one first")


def _disk_full(code: int, target: Path, shown: Path) -> UserError:
    what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    if is_checkpoint(target):
        resumable = (target / TRAINER_STATE_FILE).is_file()
        return UserError(f"{what} while writing checkpoint {shown}; the previous checkpoint at {shown} is intact; "
                         f"free space and {'resume with --resume' if resumable else 'save again'}")
    return UserError(f"{what} while writing checkpoint {shown}; nothing was written there; free space and try again")


def _os_errno(err: BaseException) -> int | None:
    """The OS error number behind `err`: an OSError's, or the "(os error N)" that safetensors' and tokenizers'
    Rust writers put in their messages, following the chain of causes."""
    for _ in range(8):
        if err is None:
            return None
        if isinstance(err, OSError) and err.errno:
            return err.errno
        found = re.search(r"os error (\d+)", str(err))
        if found:
            return int(found.group(1))
        err = err.__cause__ or err.__context__
    return None


def _swap_in(tmp: Path, target: Path) -> None:
    """Make `tmp` the folder `target`. After an exchange `tmp` holds the previous checkpoint (for the caller to
    remove); without one, the previous checkpoint passes through `.NAME.old`."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
    elif not _exchange(tmp, target):
        old = _old(target)
        _remove(old)
        os.replace(target, old)
        os.replace(tmp, target)  # a crash right here leaves no `target`: readers fall back to `old`
        _remove(old)
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system or the file system
    cannot, for the caller to fall back on two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc < 2.28, or another C library
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp.{_host()}.{os.getpid()}."


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _remove_stale_temps(target: Path) -> None:
    """Remove the temporary folders that saves to `target` killed on this host left behind (their process is
    gone). Those of other hosts (a shared file system) or of live processes are left alone."""
    prefix = f".{target.name}.tmp."
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix) or entry in _ACTIVE_TEMPS:
            continue
        parts = entry.name[len(prefix):].split(".")
        if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or not _alive(pid):
            _remove(entry)


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, harmless check: never remove
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders
    finally:
        os.close(fd)


def recover(path: str | Path) -> Path:
    """For the process that writes `path` (a save, a resuming trainer): when `path` is missing because a save
    was interrupted between its two renames, put the last good checkpoint, `.NAME.old`, back. Returns `path`."""
    path = Path(path)
    old = _old(path)
    if not os.path.lexists(path) and is_checkpoint(old):
        os.replace(old, path)
    return path


def resolve(path: str | Path) -> Path:
    """For readers: `path`, or the last good checkpoint `.NAME.old` while `path` is missing (a save between its
    two renames, under way or interrupted). Renames nothing, so that a save under way is not disturbed."""
    path = Path(path)
    old = _old(path)
    if not os.path.lexists(path) and is_checkpoint(old):
        return old
    return path


# -- reading ----------------------------------------------------------------------------------------------------
def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build the model that `path/config.json` describes and fill it from `path/model.safetensors`.

    While `path` is missing because a save is between its two renames (or was interrupted there), the last
    good checkpoint `.NAME.old` is read instead."""
    path = Path(path)
    folder = resolve(path)
    try:
        return _load_folder(folder, device)
    except (UserError, OSError):
        if folder != path and path.is_dir():  # the save under way finished meanwhile and removed .NAME.old
            return _load_folder(path, device)
        raise


def _load_folder(path: Path, device: str | torch.device) -> nn.Module:
    if not path.is_dir():
        raise UserError(f"{path}: no such model folder")
    config = load_config(path / CONFIG_FILE)
    model = build_model(config)
    load_weights(model, path / WEIGHTS_FILE)
    if has_tokenizer(path):
        model.tokenizer = load_tokenizer(path)
    return model.to(device).eval()


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


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "vocab.json", "vocab.txt", "words.txt",
                                                    "word_tokenizer.json"))


def load_tokenizer(path: Path):
    """The tokenizer saved in a model folder: ELMo's word list, Transformer-XL's word vocabulary, or a Hugging
    Face `tokenizers` one."""
    from ctxlm.char_tokenizer import WORDS_FILE, CharTokenizer
    from ctxlm.tokenization import Tokenizer
    from ctxlm.word_tokenizer import CONFIG_FILE as WORD_CONFIG_FILE
    from ctxlm.word_tokenizer import WordTokenizer

    if (path / WORDS_FILE).is_file():
        return CharTokenizer.from_files(path)
    if (path / WORD_CONFIG_FILE).is_file():
        return WordTokenizer.from_files(path)
    return Tokenizer.from_files(path)
