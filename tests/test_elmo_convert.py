"""Importing AllenNLP's published ELMo files (options.json + weights.hdf5), checked against a NumPy reference.

The weights file is written here in the published layout (bilm-tf's dataset names) with the small model's
structure at toy sizes and random values; the reference forward pass reads those raw arrays the way AllenNLP
and bilm-tf do (TF gate order, forget bias + 1, AllenNLP's negated highway carry, clipping, skip connection),
independently of the conversion code. No test touches the network.
"""

import copy
import io
import json
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import ctxlm
from ctxlm.convert import allennlp_elmo
from ctxlm.convert.allennlp_elmo import config_from_options, state_dict_from_hdf5
from ctxlm.errors import UserError
from ctxlm.models.elmo import ElmoLanguageModel
from ctxlm.tokenizers.characters import BOS, EOS, SPECIALS, word_characters
from tolerances import assert_fp_close, fp_close

h5py = pytest.importorskip("h5py")

SMALL = {"lstm": {"use_skip_connections": True, "projection_dim": 128, "cell_clip": 3, "proj_clip": 3, "dim": 1024,
                  "n_layers": 2},
         "char_cnn": {"activation": "relu", "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512],
                                                        [7, 1024]],
                      "n_highway": 1, "embedding": {"dim": 16}, "n_characters": 262, "max_characters_per_token": 50}}
ORIGINAL = {"lstm": {"use_skip_connections": True, "projection_dim": 512, "cell_clip": 3, "proj_clip": 3, "dim": 4096,
                     "n_layers": 2},
            "char_cnn": {"activation": "relu", "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512],
                                                           [7, 1024]],
                         "n_highway": 2, "embedding": {"dim": 16}, "n_characters": 262,
                         "max_characters_per_token": 50}}
TINY = {"lstm": {"use_skip_connections": True, "projection_dim": 8, "cell_clip": 3, "proj_clip": 3, "dim": 16,
                 "n_layers": 2},
        "char_cnn": {"activation": "relu", "filters": [[1, 4], [2, 8], [3, 8]], "n_highway": 1,
                     "embedding": {"dim": 4}, "n_characters": 262, "max_characters_per_token": 50}}
SENTENCES = [["The", "cat", "sat", "on", "the", "mat", "."], ["Naïve", "émigrés", "!"]]
# The float32 model's rounding (tests/tolerances.py): sums of up to 20 terms (TINY's 20 filters into the highway
# and the projection), through 23 chained stages: the character CNN's 3, then 2 products (gates, projection) per
# LSTM step along the longest path, 9 steps + 1 layer.
FP32 = dict(terms=20, depth=23)

# Which ctxlm parameters each dataset feeds (written out here, not taken from the converter).
ENC, CELL = "backbone.token_encoder", "RNN_{}/RNN/MultiRNNCell/Cell{}/LSTMCell"
FEEDS = {"char_embed": [f"{ENC}.char_embed.weight"], "CNN_proj/W_proj": [f"{ENC}.projection.weight"],
         "CNN_proj/b_proj": [f"{ENC}.projection.bias"]}
for _i in range(3):
    FEEDS |= {f"CNN/W_cnn_{_i}": [f"{ENC}.convs.{_i}.weight"], f"CNN/b_cnn_{_i}": [f"{ENC}.convs.{_i}.bias"]}
FEEDS |= {"CNN_high_0/W_transform": [f"{ENC}.highways.0.transform.weight"],
          "CNN_high_0/b_transform": [f"{ENC}.highways.0.transform.bias"],
          "CNN_high_0/W_carry": [f"{ENC}.highways.0.gate.weight"],
          "CNN_high_0/b_carry": [f"{ENC}.highways.0.gate.bias"]}
for _d, _stack in enumerate(["forward_layers", "backward_layers"]):
    for _l in range(2):
        _ours = f"backbone.{_stack}.{_l}.lstm"
        FEEDS |= {f"{CELL.format(_d, _l)}/W_0": [f"{_ours}.weight_ih_l0", f"{_ours}.weight_hh_l0"],
                  f"{CELL.format(_d, _l)}/B": [f"{_ours}.bias_hh_l0"],
                  f"{CELL.format(_d, _l)}/W_P_0": [f"{_ours}.weight_hr_l0"]}


def tiny_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in the published layout and dataset names, at TINY's sizes; large enough that the cell
    and projection clips at 3 come into play."""
    rng = np.random.default_rng(seed)
    lstm, cnn = TINY["lstm"], TINY["char_cnn"]
    char_dim, dim, cell = cnn["embedding"]["dim"], lstm["projection_dim"], lstm["dim"]
    n_filters = sum(count for _, count in cnn["filters"])
    arrays = {"char_embed": rng.uniform(-1, 1, (cnn["n_characters"] - 1, char_dim))}
    for i, (width, count) in enumerate(cnn["filters"]):
        arrays[f"CNN/W_cnn_{i}"] = rng.normal(0, 0.5, (1, width, char_dim, count))
        arrays[f"CNN/b_cnn_{i}"] = rng.normal(0, 0.3, count)
    arrays |= {"CNN_high_0/W_transform": rng.normal(0, 0.4, (n_filters, n_filters)),
               "CNN_high_0/b_transform": rng.normal(0, 0.3, n_filters),
               "CNN_high_0/W_carry": rng.normal(0, 0.4, (n_filters, n_filters)),
               "CNN_high_0/b_carry": rng.normal(-1, 0.5, n_filters),
               "CNN_proj/W_proj": rng.normal(0, 0.4, (n_filters, dim)), "CNN_proj/b_proj": rng.normal(0, 0.3, dim)}
    for d in range(2):
        for layer in range(lstm["n_layers"]):
            arrays[f"{CELL.format(d, layer)}/W_0"] = rng.normal(0, 0.6, (2 * dim, 4 * cell))
            arrays[f"{CELL.format(d, layer)}/B"] = rng.normal(0, 0.5, 4 * cell)
            arrays[f"{CELL.format(d, layer)}/W_P_0"] = rng.normal(0, 0.9, (cell, dim))
    return {name: a.astype(np.float32) for name, a in arrays.items()}


def write_folder(folder: Path, arrays: dict[str, np.ndarray], options: dict = TINY, stem: str = "elmo_tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}_options.json").write_text(json.dumps(options))
    with h5py.File(folder / f"{stem}_weights.hdf5", "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
    return folder


@pytest.fixture(scope="module")
def arrays():
    return tiny_arrays()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, arrays):
    return write_folder(tmp_path_factory.mktemp("elmo") / "tiny", arrays)


# ---------------------------------------------------------------------------------------- the NumPy reference


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_token_layer(a: dict[str, np.ndarray], chars: np.ndarray) -> np.ndarray:
    """AllenNLP's _ElmoCharacterEncoder on (time, max_characters) character ids → (time, dim)."""
    table = np.concatenate([np.zeros((1, a["char_embed"].shape[1])), a["char_embed"]])
    e = table[chars]  # (time, chars, char_dim)
    pooled = []
    for i, (width, _) in enumerate(TINY["char_cnn"]["filters"]):
        kernel = a[f"CNN/W_cnn_{i}"][0]  # (width, char_dim, count): a TF conv, no flip
        positions = e.shape[1] - width + 1
        conv = np.stack([np.einsum("twd,wdc->tc", e[:, p:p + width], kernel) for p in range(positions)], axis=1)
        pooled.append(np.maximum((conv + a[f"CNN/b_cnn_{i}"]).max(axis=1), 0.0))  # max over positions, relu
    x = np.concatenate(pooled, axis=-1)
    # AllenNLP's highway: one matrix [W_transform^T; -W_carry^T], output gate * x + (1 - gate) * relu(transform)
    weight = np.concatenate([a["CNN_high_0/W_transform"].T, -1.0 * a["CNN_high_0/W_carry"].T], axis=0)
    bias = np.concatenate([a["CNN_high_0/b_transform"], -1.0 * a["CNN_high_0/b_carry"]])
    projected = x @ weight.T + bias
    nonlinear, gate = np.split(projected, 2, axis=-1)
    gate = sigmoid(gate)
    x = gate * x + (1.0 - gate) * np.maximum(nonlinear, 0.0)
    return x @ a["CNN_proj/W_proj"] + a["CNN_proj/b_proj"]


def reference_lstm(a: dict[str, np.ndarray], direction: int, layer: int, x: np.ndarray) -> np.ndarray:
    """bilm-tf's LSTMCell(num_proj, cell_clip, proj_clip, forget_bias=1) over (time, dim), left to right."""
    kernel, bias = a[f"{CELL.format(direction, layer)}/W_0"], a[f"{CELL.format(direction, layer)}/B"]
    projection = a[f"{CELL.format(direction, layer)}/W_P_0"]
    cell_clip, proj_clip = TINY["lstm"]["cell_clip"], TINY["lstm"]["proj_clip"]
    h, c = np.zeros(projection.shape[1]), np.zeros(projection.shape[0])
    out = []
    for x_t in x:
        i, j, f, o = np.split(np.concatenate([x_t, h]) @ kernel + bias, 4)  # TF's gate order
        c = np.clip(sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j), -cell_clip, cell_clip)
        h = np.clip((sigmoid(o) * np.tanh(c)) @ projection, -proj_clip, proj_clip)
        out.append(h)
    return np.stack(out)


def reference_states(a: dict[str, np.ndarray], chars: np.ndarray) -> list[np.ndarray]:
    """AllenNLP's _ElmoBiLm on one sentence: [token ‖ token, forward_1 ‖ backward_1, forward_2 ‖ backward_2], in
    float64 (the weights' float32 values exactly), so that only the model's rounding is compared."""
    a = {name: array.astype(np.float64) for name, array in a.items()}
    tokens = reference_token_layer(a, chars)
    states = [np.concatenate([tokens, tokens], axis=-1)]
    forward_in, backward_in = tokens, tokens[::-1]
    for layer in range(TINY["lstm"]["n_layers"]):
        forward_out = reference_lstm(a, 0, layer, forward_in)
        backward_out = reference_lstm(a, 1, layer, backward_in)
        if layer != 0:  # skip connections
            forward_out, backward_out = forward_out + forward_in, backward_out + backward_in
        states.append(np.concatenate([forward_out, backward_out[::-1]], axis=-1))
        forward_in, backward_in = forward_out, backward_out
    return states


def sentence_chars(words: list[str]) -> np.ndarray:
    return np.array([word_characters(w) for w in [BOS, *words, EOS]])


def batch_chars(sentences=SENTENCES) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, time, 50) character ids of `<S> words </S>`, padded with the all-zero padding word, and the mask."""
    rows = [sentence_chars(s) for s in sentences]
    time = max(len(r) for r in rows)
    chars = torch.zeros(len(rows), time, rows[0].shape[1], dtype=torch.long)
    mask = torch.zeros(len(rows), time, dtype=torch.bool)
    for b, r in enumerate(rows):
        chars[b, :len(r)] = torch.from_numpy(r)
        mask[b, :len(r)] = True
    return chars, mask


def run(model, chars, mask) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(model(chars, mask=mask).hidden.states)  # (L + 1, batch, time, 2 * dim)


# ---------------------------------------------------------------------------------------------------- the tests


@pytest.mark.numeric
def test_outputs_match_a_numpy_reference_of_allennlp(folder, arrays):
    model = allennlp_elmo.from_allennlp_folder(folder)
    assert not model.training and model.softmax is None and model.config.dropout == 0.0
    assert model.tokenizer.words.words == list(SPECIALS) and model.tokenizer.vocab_size == 4
    chars, mask = batch_chars()
    states = run(model, chars, mask)
    assert states.shape == (3, 2, 9, 16)  # (L + 1, batch, time, 2 * dim)
    clipped = 0
    for b, words in enumerate(SENTENCES):
        expected = reference_states(arrays, sentence_chars(words))
        n = len(words) + 2
        for k, state in enumerate(expected):
            assert_fp_close(states[k, b, :n], state, **FP32, msg=f"state {k}")
        clipped += int((np.abs(expected[1]) == 3.0).sum())  # layer 1 (no skip): the LSTMs' own outputs, np.clip's 3.0
    assert clipped > 0, "the test's weights should drive some projected states into the clip"


@pytest.mark.numeric
def test_padded_batch_matches_each_sentence_alone(folder):
    model = allennlp_elmo.from_allennlp_folder(folder)
    chars, mask = batch_chars()
    batched = run(model, chars, mask)
    for b in range(2):
        n = int(mask[b].sum())
        alone = run(model, chars[b:b + 1, :n], mask[b:b + 1, :n])
        assert_fp_close(batched[:, b, :n], alone[:, 0], **FP32)  # other product shapes: other summation orders


def test_every_dataset_feeds_exactly_its_parameters_and_changes_the_output(tmp_path, folder, arrays):
    config = allennlp_elmo.read_options(folder / "elmo_tiny_options.json")
    base = state_dict_from_hdf5(folder / "elmo_tiny_weights.hdf5", config)
    assert set(FEEDS) == set(arrays)
    assert sorted(n for names in FEEDS.values() for n in names) == sorted(
        n for n in base if "bias_ih" not in n)  # every parameter comes from one dataset; bias_ih stays zero
    assert all(not base[n].any() for n in base if "bias_ih" in n)
    chars, mask = batch_chars()
    model = ElmoLanguageModel(config)
    model.load_state_dict(base)
    reference = run(model.eval(), chars, mask)
    rng = np.random.default_rng(1)
    for name, array in arrays.items():
        changed = dict(arrays)
        changed[name] = array + rng.normal(0, 0.5, array.shape).astype(np.float32)
        path = tmp_path / name.replace("/", "_") / "weights.hdf5"
        write_folder(path.parent, changed)
        state = state_dict_from_hdf5(path.parent / "elmo_tiny_weights.hdf5", config)
        assert {n for n in base if not torch.equal(base[n], state[n])} == set(FEEDS[name]), name
        model.load_state_dict(state)
        assert not fp_close(run(model, chars, mask), reference, **FP32), name  # more than rounding moved it


def test_tf_gates_forget_bias_and_carry_land_where_expected(folder, arrays):
    """Spot checks of the layout itself (the reference test covers the algebra)."""
    config = allennlp_elmo.read_options(folder / "elmo_tiny_options.json")
    state = state_dict_from_hdf5(folder / "elmo_tiny_weights.hdf5", config)
    cell, dim = 16, 8
    kernel, bias = arrays[f"{CELL.format(1, 1)}/W_0"], arrays[f"{CELL.format(1, 1)}/B"]
    lstm = "backbone.backward_layers.1.lstm"
    # nn.LSTM's forget rows (second block) are TF's third block (f); its g rows (third block) TF's second (j)
    f_rows, g_rows = slice(cell, 2 * cell), slice(2 * cell, 3 * cell)
    np.testing.assert_array_equal(state[f"{lstm}.weight_ih_l0"][f_rows].numpy(), kernel[:dim, 2 * cell:3 * cell].T)
    np.testing.assert_array_equal(state[f"{lstm}.weight_hh_l0"][g_rows].numpy(), kernel[dim:, cell:2 * cell].T)
    # one float32 addition, correctly rounded wherever it is done: the same bits
    np.testing.assert_array_equal(state[f"{lstm}.bias_hh_l0"][cell:2 * cell].numpy(), bias[2 * cell:3 * cell] + 1.0)
    np.testing.assert_array_equal(state[f"{lstm}.bias_hh_l0"][3 * cell:].numpy(), bias[3 * cell:])
    embed = state[f"{ENC}.char_embed.weight"]
    assert embed.shape == (262, 4) and not embed[0].any()
    np.testing.assert_array_equal(embed[1:].numpy(), arrays["char_embed"])
    np.testing.assert_array_equal(state[f"{ENC}.highways.0.gate.bias"].numpy(), arrays["CNN_high_0/b_carry"])
    np.testing.assert_array_equal(state[f"{ENC}.convs.2.weight"][5, :, 1].numpy(), arrays["CNN/W_cnn_2"][0, 1, :, 5])


@pytest.mark.parametrize("broken", ["missing", "misshaped", "unexpected"])
def test_bad_datasets_are_named(tmp_path, arrays, broken):
    arrays = dict(arrays)
    name = {"missing": "CNN_high_0/b_carry", "misshaped": f"{CELL.format(1, 1)}/W_P_0",
            "unexpected": "CNN_high_1/W_carry"}[broken]
    if broken == "missing":
        del arrays[name]
    else:
        arrays[name] = np.zeros((16, 7) if broken == "misshaped" else (20, 20), np.float32)
    folder = write_folder(tmp_path / "bad", arrays)
    with pytest.raises(UserError, match=f"{name}.*{'has shape' if broken == 'misshaped' else broken}"):
        ctxlm.load(folder)


def test_not_an_hdf5_file_is_a_user_error(tmp_path, folder):
    shutil.copytree(folder, tmp_path / "bad")
    (tmp_path / "bad" / "elmo_tiny_weights.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(UserError, match="elmo_tiny_weights.hdf5.*not a readable HDF5"):
        ctxlm.load(tmp_path / "bad")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda o: o["lstm"].pop("projection_dim"), "key lstm.projection_dim is missing"),
    (lambda o: o["char_cnn"].__setitem__("n_highway", "1"), "key char_cnn.n_highway must be an integer"),
    (lambda o: o["char_cnn"]["embedding"].__setitem__("dim", True), "key char_cnn.embedding.dim must be an int"),
    (lambda o: o["char_cnn"].__setitem__("filters", [[1, 4], [2]]), "key char_cnn.filters must be a list of"),
    (lambda o: o["lstm"].__setitem__("cell_clip", "3"), "key lstm.cell_clip must be a number"),
    (lambda o: o.__setitem__("lstm", 4), "lstm must be an object"),
    (lambda o: o.pop("char_cnn"), "key char_cnn is missing"),
])
def test_bad_options_name_the_file_and_key(tmp_path, arrays, edit, message):
    options = copy.deepcopy(TINY)
    edit(options)
    folder = write_folder(tmp_path / "bad", arrays, options)
    with pytest.raises(UserError, match=f"elmo_tiny_options.json: {message}"):
        ctxlm.load(folder)
    with pytest.raises(UserError, match=message):
        config_from_options(options)


def test_options_quirks():
    options = copy.deepcopy(TINY)
    options["lstm"] |= {"cell_clip": 0, "proj_clip": None, "use_skip_connections": False}
    options["char_cnn"]["n_characters"] = 261  # bilm-tf's training value (no padding row)
    config = config_from_options(options)
    assert (config.cell_clip, config.proj_clip, config.residual, config.n_characters) == (None, None, False, 262)


@pytest.mark.parametrize(("options", "dims", "params"), [
    (SMALL, (128, 1024, 1), 13_609_696), (ORIGINAL, (512, 4096, 2), 93_666_400)], ids=["small", "original"])
def test_published_options_give_the_published_sizes(options, dims, params):
    config = config_from_options(options)
    assert (config.dim, config.cell_dim, config.n_highway) == dims
    assert (config.vocab_size, config.dropout, config.cell_clip, config.proj_clip, config.residual) == (
        0, 0.0, 3.0, 3.0, True)
    assert config.hidden_dim == 2 * dims[0] and config.max_characters == 50 and config.char_dim == 16
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        model = ElmoLanguageModel(config)
    total = sum(p.numel() for p in model.parameters())
    assert total == params
    # nn.LSTM keeps two biases where TF has one: less the zero bias_ih, the count is AllenNLP's (13.6M, 93.6M)
    bias_ih = sum(p.numel() for n, p in model.named_parameters() if "bias_ih" in n)
    assert round((total - bias_ih) / 1e6, 1) == {128: 13.6, 512: 93.6}[config.dim]


@pytest.mark.numeric
@pytest.mark.fp32
def test_load_convert_and_embed(tmp_path, folder):
    model = ctxlm.load(folder)
    dest = ctxlm.convert(folder, tmp_path / "native")
    assert (dest / "model.safetensors").is_file() and (dest / "words.txt").is_file()
    again = ctxlm.load(dest)
    assert again.config == model.config
    chars, mask = batch_chars()
    torch.testing.assert_close(run(again, chars, mask), run(model, chars, mask), atol=0, rtol=0)
    encoded = again.tokenizer.encode_text_batch(["the cat sat", "a dog"])
    ids = torch.tensor([e.ids + [0] * (5 - len(e.ids)) for e in encoded])
    word_mask = ids != 0
    assert_fp_close(run(again, ids, word_mask), run(again, again.tokenizer.char_ids(ids), word_mask), **FP32)
    vectors = ctxlm.embed(["a text", "The cat sat on the mat."], model, layers="all", pool="words")
    assert [tuple(v.shape) for v in vectors] == [(2, 3, 16), (7, 3, 16)]  # words, L + 1, 2 * dim


def test_published_names_download_into_the_cache_atomically(tmp_path, monkeypatch, folder):
    """The download path with urlopen replaced by local files (never the network)."""
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    files = {"options.json": (folder / "elmo_tiny_options.json").read_bytes(),
             "weights.hdf5": (folder / "elmo_tiny_weights.hdf5").read_bytes()}
    fetched = []

    class Response(io.BytesIO):
        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.headers = {"Content-Length": str(len(data))}

    def fake_urlopen(url, timeout=None):
        fetched.append(url)
        return Response(next(data for suffix, data in files.items() if url.endswith(suffix)))

    monkeypatch.setattr(allennlp_elmo.urllib.request, "urlopen", fake_urlopen)
    model = ctxlm.load("elmo-small")
    assert fetched == list(allennlp_elmo.published_urls("elmo-small"))
    assert fetched[0] == ("https://allennlp.s3.amazonaws.com/models/elmo/2x1024_128_2048cnn_1xhighway/"
                          "elmo_2x1024_128_2048cnn_1xhighway_options.json")
    cached = sorted(p.name for p in (tmp_path / "cache" / "elmo" / "elmo-small").iterdir())
    assert cached == [f"elmo_2x1024_128_2048cnn_1xhighway_{suffix}" for suffix in ("options.json", "weights.hdf5")]
    ctxlm.convert("elmo-small", tmp_path / "native")
    assert len(fetched) == 2  # the second time from the cache
    chars, mask = batch_chars()
    # the same weights and shapes in one process: the same kernels, the same bits
    torch.testing.assert_close(run(ctxlm.load(tmp_path / "native"), chars, mask), run(model, chars, mask), atol=0,
                               rtol=0)


def test_offline_download_is_a_user_error_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))

    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(allennlp_elmo.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="could not download 'elmo-original'.*offline"):
        ctxlm.load("elmo-original")
    assert list((tmp_path / "cache" / "elmo" / "elmo-original").iterdir()) == []


def test_truncated_download_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))

    class Short(io.BytesIO):
        headers = {"Content-Length": "100"}

    monkeypatch.setattr(allennlp_elmo.urllib.request, "urlopen", lambda url, timeout=None: Short(b"{}"))
    with pytest.raises(UserError, match="got 2 of 100 bytes"):
        ctxlm.convert("elmo-small", tmp_path / "native")
    assert list((tmp_path / "cache" / "elmo" / "elmo-small").iterdir()) == []
    assert not (tmp_path / "native").exists()
