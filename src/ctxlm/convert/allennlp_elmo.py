"""Published ELMo weights (AllenNLP / bilm-tf: options.json + weights.hdf5) → ctxlm `ElmoLanguageModel`.

The hdf5 file is bilm-tf's TensorFlow variables, renamed by its `dump_weights` (the softmax is left out). The
conversion does what AllenNLP's `_ElmoCharacterEncoder._load_*` and `ElmoLstm.load_weights` do:

- `char_embed` (n_characters - 1, char_dim) gains a zero row 0 for the padding character.
- `CNN/W_cnn_{i}` (1, width, char_dim, count), a TF conv2d kernel → Conv1d weight (count, char_dim, width).
- `CNN_high_{k}/W_transform, b_transform, W_carry, b_carry`: TF computes t = sigmoid(x W_carry + b_carry) and
  y = t * relu(x W_transform + b_transform) + (1 - t) * x. That is our `Highway` with gate = carry as stored
  (AllenNLP negates W_carry and b_carry because its highway computes g * x + (1 - g) * f(x); g = 1 - t).
- `CNN_proj/W_proj, b_proj` → the projection (TF's (in, out) matrices are transposed everywhere).
- `RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/`: `W_0` (input_dim + dim, 4 * cell_dim) multiplies
  [input, h], its gates in TF's order (i, j, f, o) → nn.LSTM's (i, f, g = j, o), split into weight_ih and
  weight_hh; `B` with TF's run-time forget bias (+1) added → bias_hh (bias_ih zero); `W_P_0` (cell_dim, dim)
  → weight_hr. Direction 0 is the forward LSTM, 1 the backward one.

Every dataset's name and shape is checked against what the options describe before any is converted; a
missing, mis-shaped or unexpected dataset is named in the error.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ctxlm.checkpoint import check_shapes
from ctxlm.config import ElmoConfig
from ctxlm.errors import UserError
from ctxlm.models.elmo import ElmoLanguageModel
from ctxlm.paths import cache_root
from ctxlm.progress import progress
from ctxlm.tokenizers.characters import SPECIALS, CharTokenizer

OPTIONS_SUFFIX = "options.json"
WEIGHTS_SUFFIX = "weights.hdf5"
BASE_URL = "https://allennlp.s3.amazonaws.com/models/elmo"
# Published names → AllenNLP's folder on S3, which holds elmo_{folder}_options.json and elmo_{folder}_weights.hdf5.
ELMO_MODELS = {
    "elmo-small": "2x1024_128_2048cnn_1xhighway",  # 13.6M parameters
    "elmo-medium": "2x2048_256_2048cnn_1xhighway",  # 28.0M
    "elmo-original": "2x4096_512_2048cnn_2xhighway",  # 93.6M
    "elmo-original-5.5b": "2x4096_512_2048cnn_2xhighway_5.5B",  # 93.6M, trained on 5.5B tokens
}
_TF_TO_TORCH_GATES = (0, 2, 1, 3)  # TF (i, j, f, o) → nn.LSTM (i, f, g, o): take TF chunks i, f, j, o


# ---------------------------------------------------------------------------------------------------- options


def _get(options: dict, key: str, kinds: tuple[type, ...], source: str, *, default=...):
    """options["a"]["b"] for key "a.b", checked to be one of `kinds` (bool is never an int here)."""
    node = options
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            raise UserError(f"{source}: {'.'.join(parts[:depth])} must be an object, got {node!r}")
        if part not in node:
            if default is not ...:
                return default
            raise UserError(f"{source}: key {key} is missing")
        node = node[part]
    if isinstance(node, bool) and bool not in kinds or not isinstance(node, kinds):
        words = {int: "an integer", float: "a number", bool: "true/false", list: "a list", str: "a string",
                 type(None): "null"}
        names = " or ".join(words[k] for k in kinds if not (k is int and float in kinds))  # int is a number
        raise UserError(f"{source}: key {key} must be {names}, got {node!r}")
    return node


def config_from_options(options: dict, source: str = OPTIONS_SUFFIX) -> ElmoConfig:
    """The ctxlm config of a published biLM from its `options.json` (inference: no softmax, no dropout).

    `source` names the file in errors. Clips of 0 or null mean none (AllenNLP tests them for truth). bilm-tf's
    training options say n_characters 261 (no padding row); its README has users change that to 262 for
    inference, and AllenNLP ignores the key, so 261 reads as 262 here.
    """
    if not isinstance(options, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(options).__name__}")
    if "char_cnn" not in options:
        raise UserError(f"{source}: key char_cnn is missing (only character-based ELMo models can be imported)")
    number = (int, float)
    filters = _get(options, "char_cnn.filters", (list,), source)
    if not filters or not all(isinstance(f, list) and len(f) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in f) for f in filters):
        raise UserError(f"{source}: key char_cnn.filters must be a list of [width, count] pairs of positive "
                        f"integers, got {filters!r}")
    n_characters = _get(options, "char_cnn.n_characters", (int,), source)
    cell_clip = _get(options, "lstm.cell_clip", (*number, type(None)), source, default=None)
    proj_clip = _get(options, "lstm.proj_clip", (*number, type(None)), source, default=None)
    config = ElmoConfig(
        vocab_size=0,
        n_characters=262 if n_characters == 261 else n_characters,
        max_characters=_get(options, "char_cnn.max_characters_per_token", (int,), source),
        char_dim=_get(options, "char_cnn.embedding.dim", (int,), source),
        filters=[list(f) for f in filters],
        n_highway=_get(options, "char_cnn.n_highway", (int,), source),
        activation=_get(options, "char_cnn.activation", (str,), source),
        dim=_get(options, "lstm.projection_dim", (int,), source),
        cell_dim=_get(options, "lstm.dim", (int,), source),
        n_layers=_get(options, "lstm.n_layers", (int,), source),
        cell_clip=float(cell_clip) if cell_clip else None,
        proj_clip=float(proj_clip) if proj_clip else None,
        residual=_get(options, "lstm.use_skip_connections", (bool,), source, default=False),
        dropout=0.0,
    )
    if config.n_highway < 0:
        raise UserError(f"{source}: key char_cnn.n_highway must be 0 or more, got {config.n_highway}")
    try:
        config.validate()
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return config


def read_options(path: str | Path) -> ElmoConfig:
    path = Path(path)
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable JSON options file ({err})") from None
    return config_from_options(options, str(path))


# ---------------------------------------------------------------------------------------------------- weights


def hdf5_layout(config: ElmoConfig) -> dict[str, tuple[int, ...]]:
    """Every dataset a weights.hdf5 for `config` holds, with its shape."""
    n_filters = sum(count for _, count in config.filters)
    shapes: dict[str, tuple[int, ...]] = {"char_embed": (config.n_characters - 1, config.char_dim)}
    for i, (width, count) in enumerate(config.filters):
        shapes[f"CNN/W_cnn_{i}"] = (1, width, config.char_dim, count)
        shapes[f"CNN/b_cnn_{i}"] = (count,)
    for k in range(config.n_highway):
        for part in ("transform", "carry"):
            shapes[f"CNN_high_{k}/W_{part}"] = (n_filters, n_filters)
            shapes[f"CNN_high_{k}/b_{part}"] = (n_filters,)
    shapes["CNN_proj/W_proj"] = (n_filters, config.dim)
    shapes["CNN_proj/b_proj"] = (config.dim,)
    for direction in (0, 1):
        for layer in range(config.n_layers):
            cell = _cell(direction, layer)
            shapes[f"{cell}/W_0"] = (2 * config.dim, 4 * config.cell_dim)  # every layer reads dim-wide inputs
            shapes[f"{cell}/B"] = (4 * config.cell_dim,)
            shapes[f"{cell}/W_P_0"] = (config.cell_dim, config.dim)
    return shapes


def _cell(direction: int, layer: int) -> str:
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def read_hdf5(path: str | Path, config: ElmoConfig) -> dict[str, np.ndarray]:
    """The datasets of a published weights.hdf5 (float32), after checking their names and shapes."""
    try:
        import h5py  # here, not at the top: it takes ~0.2 s to import, which `import ctxlm` would pay
    except ImportError:
        raise UserError("reading ELMo's weights.hdf5 needs h5py: pip install h5py") from None

    path = Path(path)
    expected = hdf5_layout(config)
    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        with h5py.File(path, "r") as f:
            found: dict[str, tuple[int, ...]] = {}
            f.visititems(lambda name, obj: found.__setitem__(name, obj.shape) if isinstance(obj, h5py.Dataset)
                         else None)
            for name in expected:
                if name not in found:
                    raise UserError(f"{path}: dataset {name} is missing (the options describe it)")
                if tuple(found[name]) != expected[name]:
                    raise UserError(f"{path}: dataset {name} has shape {tuple(found[name])}, the options expect "
                                    f"{expected[name]}")
            for name in sorted(found.keys() - expected.keys()):
                raise UserError(f"{path}: dataset {name} is unexpected (the options describe no such weight)")
            return {name: np.asarray(f[name][...], dtype=np.float32) for name in expected}
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file ({err})") from None


def state_dict_from_hdf5(path: str | Path, config: ElmoConfig) -> dict[str, Tensor]:
    """An `ElmoLanguageModel(config)` state dict from a published weights.hdf5."""
    data = {name: torch.from_numpy(array) for name, array in read_hdf5(path, config).items()}
    state: dict[str, Tensor] = {}
    enc = "backbone.token_encoder"
    char_embed = data["char_embed"]
    state[f"{enc}.char_embed.weight"] = torch.cat([char_embed.new_zeros(1, config.char_dim), char_embed])
    for i in range(len(config.filters)):
        state[f"{enc}.convs.{i}.weight"] = data[f"CNN/W_cnn_{i}"][0].permute(2, 1, 0)  # (count, char_dim, width)
        state[f"{enc}.convs.{i}.bias"] = data[f"CNN/b_cnn_{i}"]
    for k in range(config.n_highway):
        for ours, theirs in (("transform", "transform"), ("gate", "carry")):
            state[f"{enc}.highways.{k}.{ours}.weight"] = data[f"CNN_high_{k}/W_{theirs}"].t()
            state[f"{enc}.highways.{k}.{ours}.bias"] = data[f"CNN_high_{k}/b_{theirs}"]
    state[f"{enc}.projection.weight"] = data["CNN_proj/W_proj"].t()
    state[f"{enc}.projection.bias"] = data["CNN_proj/b_proj"]
    for direction, stack in enumerate(("forward_layers", "backward_layers")):
        for layer in range(config.n_layers):
            cell = _cell(direction, layer)
            weight = _torch_gates(data[f"{cell}/W_0"].t())  # (4 * cell_dim, input_dim + dim)
            bias = data[f"{cell}/B"].clone()
            bias[2 * config.cell_dim:3 * config.cell_dim] += 1.0  # TF's forget_bias, added at run time
            prefix = f"backbone.{stack}.{layer}.lstm"
            state[f"{prefix}.weight_ih_l0"] = weight[:, :config.dim]
            state[f"{prefix}.weight_hh_l0"] = weight[:, config.dim:]
            state[f"{prefix}.bias_ih_l0"] = torch.zeros(4 * config.cell_dim)
            state[f"{prefix}.bias_hh_l0"] = _torch_gates(bias)
            state[f"{prefix}.weight_hr_l0"] = data[f"{cell}/W_P_0"].t()
    return {name: tensor.contiguous() for name, tensor in state.items()}


def _torch_gates(x: Tensor) -> Tensor:
    chunks = x.chunk(4, dim=0)
    return torch.cat([chunks[i] for i in _TF_TO_TORCH_GATES], dim=0)


# ---------------------------------------------------------------------------------------------------- folders


def allennlp_files(path: str | Path) -> tuple[Path, Path] | None:
    """(options.json, weights.hdf5) of a folder holding one file ending in each, else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    options = sorted(p for p in path.iterdir() if p.name.endswith(OPTIONS_SUFFIX) and p.is_file())
    weights = sorted(p for p in path.iterdir() if p.name.endswith(WEIGHTS_SUFFIX) and p.is_file())
    if not options or not weights:
        return None
    if len(options) > 1 or len(weights) > 1:
        raise UserError(f"{path}: several ELMo options or weights files ({', '.join(p.name for p in options + weights)}"
                        "); keep one of each")
    return options[0], weights[0]


def is_allennlp_layout(path: str | Path) -> bool:
    try:
        return allennlp_files(path) is not None
    except UserError:
        return True  # it is one, ambiguous: from_allennlp_folder says why


def from_allennlp_folder(path: str | Path):
    """An `ElmoLanguageModel` in eval mode from a folder with AllenNLP's options.json + weights.hdf5.

    The published files carry no vocabulary: the attached `CharTokenizer` holds the four specials only and
    numbers words as it meets them (ELMo reads their characters; vocab_size 0 means no softmax)."""
    files = allennlp_files(path)
    if files is None:
        raise UserError(f"{path}: expected a folder with an ELMo *{OPTIONS_SUFFIX} and *{WEIGHTS_SUFFIX}")
    options_file, weights_file = files
    config = read_options(options_file)
    state = state_dict_from_hdf5(weights_file, config)
    model = ElmoLanguageModel(config)
    check_shapes(model, {name: tuple(t.shape) for name, t in state.items()}, str(weights_file))
    model.load_state_dict(state)
    model.tokenizer = CharTokenizer(list(SPECIALS), max_characters=config.max_characters)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- downloads


def published_urls(name: str) -> tuple[str, str]:
    """(options URL, weights URL) of a published ELMo."""
    folder = ELMO_MODELS[name]
    base = f"{BASE_URL}/{folder}/elmo_{folder}"
    return f"{base}_{OPTIONS_SUFFIX}", f"{base}_{WEIGHTS_SUFFIX}"


def download(name: str) -> Path:
    """The cache folder holding a published ELMo's options and weights, fetched from AllenNLP's S3 if needed."""
    folder = cache_root() / "elmo" / name
    folder.mkdir(parents=True, exist_ok=True)
    for url in published_urls(name):
        target = folder / url.rsplit("/", 1)[1]
        if not target.is_file():
            _fetch(url, target, name)
    return folder


def _fetch(url: str, target: Path, name: str) -> None:
    """url → target, through a temporary file in the same folder renamed into place when complete."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            written = 0
            with progress(desc=target.name, total=total, unit="B", unit_scale=True, unit_divisor=1024) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        if total is not None and written != total:
            raise OSError(f"got {written} of {total} bytes")
        os.replace(tmp, target)
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError and timeouts are OSErrors
        raise UserError(f"could not download {name!r} from {url} ({err}); offline? Download its options.json and "
                        f"weights.hdf5 by hand into a folder and pass that folder instead") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
