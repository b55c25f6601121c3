"""Transformer-XL: the relative shift, memory and recurrence, causality, the adaptive softmax, saving and loading,
the Hub-layout importer (on a state dict written here, no transformers needed), and the word tokenizer.

Parity with the reference implementation's logits lives in tests/parity (its own environment: `make parity-xl`).
"""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import ctxlm
import ctxlm.models.transformer_xl as xl
from ctxlm.config import TransformerXLConfig, config_from_dict
from ctxlm.errors import UserError
from ctxlm.nn.attention import memory_attention_mask, relative_shift, sinusoidal_relative_positions
from ctxlm.tokenizers import WordTokenizer
from helpers import tiny
from tolerances import assert_fp_close

TINY = dict(vocab_size=40, dim=16, n_layers=2, n_heads=2, head_dim=8, mlp_dim=32, mem_len=8, clamp_len=0,
            same_length=False, dropout=0.0)
ADAPTIVE = dict(adaptive_cutoffs=[10, 20], div_val=2)
# TINY's float32 rounding (tests/tolerances.py): sums of up to 40 terms (a log-softmax over the 40 words; the MLP's
# 32, at most 20 keys), through the embedding, 2 blocks, the head and the log-softmax.
FP32 = dict(terms=40, depth=5)


def tiny_model(**overrides):
    model = tiny("transformer-xl", **{**TINY, **overrides})
    with torch.no_grad():  # non-zero biases and LayerNorms, so that a wrong mapping shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_relative_shift_equals_a_naive_gather():
    torch.manual_seed(0)
    q_len, k_len = 4, 7
    x = torch.randn(2, 3, q_len, k_len)
    shifted = relative_shift(x)
    for i in range(q_len):
        for j in range(k_len):
            if j <= i + k_len - q_len:  # the keys query i may see; the rest is masked anyway
                assert torch.equal(shifted[..., i, j], x[..., i, j + q_len - 1 - i])


def test_sinusoidal_positions_run_from_the_farthest_distance_to_zero_and_clamp():
    pos = sinusoidal_relative_positions(6, 8)
    assert torch.equal(pos[-1], torch.tensor([0.0] * 4 + [1.0] * 4))  # distance 0: sin 0, cos 0
    clamped = sinusoidal_relative_positions(6, 8, clamp_len=2)
    assert torch.equal(clamped[0], clamped[3]) and torch.equal(clamped[3:], pos[3:])  # distances 5..2 share one


def test_same_length_mask_gives_every_query_the_same_number_of_keys():
    mask = memory_attention_mask(4, 6, mem_len=6, same_length=True)[0, 0]
    assert mask.sum(1).tolist() == [6, 6, 6, 6]
    assert mask[0].nonzero().squeeze(1).tolist() == list(range(1, 7))  # query 0 (position 6): itself and 5 back
    causal = memory_attention_mask(4, 6, mem_len=6, same_length=False)[0, 0]
    assert causal.sum(1).tolist() == [7, 8, 9, 10]


def test_memory_is_the_detached_layer_inputs_of_the_previous_segment():
    model = tiny_model().train()  # dropout 0: training mode only switches gradients on
    ids = torch.randint(0, 40, (2, 10))
    first = model.backbone(ids[:, :5], mem_len=8)
    for memory, state in zip(first.memory, first.states[:-1], strict=True):
        assert torch.equal(memory, state.detach()) and not memory.requires_grad
    second = model.backbone(ids[:, 5:], memory=first.memory, mem_len=8)
    for k, memory in enumerate(second.memory):  # [old memory ‖ this segment's inputs], the last 8 positions
        assert memory.shape == (2, 8, 16)
        assert torch.equal(memory, torch.cat([first.states[k], second.states[k]], 1)[:, -8:])  # copies, exact
    assert [m.shape[1] for m in model.backbone(ids, mem_len=3).memory] == [3, 3]
    assert [m.shape[1] for m in model.backbone(ids, mem_len=0).memory] == [0, 0]


@pytest.mark.numeric
@pytest.mark.parametrize("overrides", [{}, ADAPTIVE, dict(untie_r=False, pre_norm=True, clamp_len=3)],
                         ids=["plain", "adaptive", "shared-biases-pre-ln-clamped"])
@pytest.mark.parametrize("mem_len", [5, 8, 12])
def test_segments_with_memory_equal_one_pass_with_the_equivalent_mask(monkeypatch, overrides, mem_len):
    """Segment by segment, a query at position p of a segment starting at s attends to keys s - mem_len … p:
    the memory holds the mem_len positions before the segment (fewer at the start), the segment its own prefix.
    Each of those keys was itself computed from its own window, in an earlier segment or this one. So one pass
    over the whole sequence in which every position gets exactly that window (the "equivalent mask") gives
    the same states at every layer, relative distances and their clamp being the same in both."""
    model = tiny_model(**overrides)
    segment, n_segments = 5, 4
    ids = torch.randint(0, 40, (2, segment * n_segments))
    memory, pieces = None, []
    with torch.no_grad():
        for s in range(n_segments):
            out = model(ids[:, s * segment:(s + 1) * segment], memory=memory, mem_len=mem_len)
            memory = out.hidden.memory
            pieces.append(out.logits)
    n = ids.shape[1]
    p = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    start = p // segment * segment
    window = (j <= p) & (j >= start - mem_len)
    monkeypatch.setattr(xl, "memory_attention_mask", lambda *args, **kwargs: window[None, None])
    with torch.no_grad():
        whole = model(ids, mem_len=mem_len).logits
    assert_fp_close(torch.cat(pieces, 1), whole, **FP32)


def test_no_future_leakage_and_no_gradient_through_memory():
    model = tiny_model(**ADAPTIVE).train()
    ids = torch.randint(0, 40, (1, 12))
    memory = model(ids[:, :6]).hidden.memory
    out = model(ids[:, 6:], memory=memory)
    embeddings = out.hidden.states[0]
    embeddings.retain_grad()
    t = 2
    out.logits[:, t].sum().backward()
    grad = embeddings.grad[0].abs().sum(-1)
    assert (grad[:t + 1] > 0).all() and (grad[t + 1:] == 0).all()
    assert all(not m.requires_grad for m in memory)


@pytest.mark.numeric
def test_right_padding_leaves_the_real_tokens_alone():
    model = tiny_model()
    ids = torch.randint(1, 40, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        padded = model(ids, mask=mask).logits
        alone = model(ids[1:, :4]).logits
    assert_fp_close(padded[1, :4], alone[0], **FP32)


@pytest.mark.numeric
@pytest.mark.parametrize("overrides", [{}, ADAPTIVE, dict(adaptive_cutoffs=[10, 20], embed_dim=8)],
                         ids=["full", "adaptive", "adaptive-div1-projected"])
def test_loss_is_the_mean_nll_of_the_log_probabilities(overrides):
    model = tiny_model(**overrides)
    ids = torch.randint(0, 40, (2, 6))
    targets = torch.randint(0, 40, (2, 6))
    targets[0, :2] = -100
    log_probs = F.log_softmax(model(ids).logits, dim=-1)
    assert_fp_close(log_probs.exp().sum(-1), torch.ones(2, 6), **FP32)
    expected = F.nll_loss(log_probs.reshape(-1, 40), targets.reshape(-1))
    loss = model(ids, targets=targets).loss
    assert_fp_close(loss, expected, **FP32)
    loss.backward()
    assert model.backbone.embed.tables[0].weight.grad is not None


def test_layer_groups_and_n_blocks():
    model = tiny_model(**ADAPTIVE)
    groups = model.layer_groups()
    assert len(groups) == 3
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    hidden = model.backbone(torch.randint(0, 40, (1, 4)), n_blocks=1)
    assert len(hidden.states) == 2 and len(hidden.memory) == 1


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(**ADAPTIVE, untie_r=False)
    model.tokenizer = WordTokenizer(["<eos>", "<unk>", *[f"w{i}" for i in range(38)]])
    again = ctxlm.load(ctxlm.save(model, tmp_path / "xl"))
    assert isinstance(again.tokenizer, WordTokenizer) and again.tokenizer.words == model.tokenizer.words
    assert again.config == model.config
    ids = torch.tensor([model.tokenizer.encode("w1 w5 w30 nope", add_eos=True)])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_config_validation_names_the_field():
    config = TransformerXLConfig(**TINY, **ADAPTIVE)
    assert config.projection_ties == [False, True, True]
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad, field in [(dict(adaptive_cutoffs=[20, 10]), "adaptive_cutoffs"), (dict(adaptive_cutoffs=[40]), "adaptive"),
                       (dict(tie_projs=[True]), "tie_projs"), (dict(mem_len=-1), "mem_len"),
                       (dict(div_val=64), "div_val"), (dict(dropout=1.0), "dropout")]:
        with pytest.raises(UserError, match=field):
            config_from_dict({**config.to_dict(), **bad})


# ---- the Hub layout ----------------------------------------------------------------------------------------------

HF_CONFIG = dict(model_type="transfo-xl", architectures=["TransfoXLLMHeadModel"], vocab_size=40, cutoffs=[10, 20],
                 d_model=16, d_embed=16, n_head=2, d_head=8, d_inner=32, div_val=2, n_layer=2, mem_len=8,
                 clamp_len=4, same_length=True, pre_lnorm=False, untie_r=True, tie_projs=[False, True, True],
                 dropout=0.0, dropatt=0.0)


def hf_layout_state(hf: dict) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes TransfoXLLMHeadModel saves, tied copies included."""
    torch.manual_seed(0)
    d, inner, heads = hf["d_model"], hf["n_head"] * hf["d_head"], (hf["n_head"], hf["d_head"])
    edges = [0, *hf["cutoffs"], hf["vocab_size"]]
    widths = [hf["d_embed"] // hf["div_val"] ** i for i in range(len(edges) - 1)]
    s = {"transformer.pos_emb.inv_freq": torch.randn(d // 2), "crit.cluster_weight": torch.randn(2, hf["d_embed"]),
         "crit.cluster_bias": torch.randn(2)}
    for i, w in enumerate(widths):
        s[f"transformer.word_emb.emb_layers.{i}.weight"] = torch.randn(edges[i + 1] - edges[i], w)
        s[f"transformer.word_emb.emb_projs.{i}"] = torch.randn(d, w) * 0.3
        s[f"crit.out_layers.{i}.weight"] = s[f"transformer.word_emb.emb_layers.{i}.weight"].clone()
        s[f"crit.out_layers.{i}.bias"] = torch.randn(edges[i + 1] - edges[i])
        tied = hf["tie_projs"][i]
        s[f"crit.out_projs.{i}"] = s[f"transformer.word_emb.emb_projs.{i}"].clone() if tied else torch.randn(d, w)
    for layer in range(hf["n_layer"]):
        p = f"transformer.layers.{layer}."
        s |= {p + "dec_attn.qkv_net.weight": torch.randn(3 * inner, d) * 0.3,
              p + "dec_attn.r_net.weight": torch.randn(inner, d) * 0.3,
              p + "dec_attn.o_net.weight": torch.randn(d, inner) * 0.3,
              p + "dec_attn.r_w_bias": torch.randn(heads), p + "dec_attn.r_r_bias": torch.randn(heads),
              p + "pos_ff.CoreNet.0.weight": torch.randn(hf["d_inner"], d) * 0.3,
              p + "pos_ff.CoreNet.0.bias": torch.randn(hf["d_inner"]),
              p + "pos_ff.CoreNet.3.weight": torch.randn(d, hf["d_inner"]) * 0.3,
              p + "pos_ff.CoreNet.3.bias": torch.randn(d)}
        for norm in ("dec_attn.layer_norm", "pos_ff.layer_norm"):
            s |= {p + norm + ".weight": 1 + torch.randn(d) * 0.1, p + norm + ".bias": torch.randn(d) * 0.1}
    return s


def write_hub_folder(folder, hf=HF_CONFIG, state=None, vocab=True):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf))
    save_file(state if state is not None else hf_layout_state(hf), folder / "model.safetensors")
    if vocab:
        (folder / "vocab.txt").write_text("".join(w + "\n" for w in ["<eos>", "<unk>", *map(str, range(38))]))
    return folder


@pytest.mark.numeric
def test_hub_layout_converts_with_the_reference_formulas(tmp_path):
    folder = write_hub_folder(tmp_path / "hub")
    hf = hf_layout_state(HF_CONFIG)
    model = ctxlm.load(folder)
    assert model.config.adaptive_cutoffs == [10, 20] and model.config.clamp_len == 4
    assert model.tokenizer.encode("0 37 x", add_eos=True) == [2, 39, 1, 0]
    state = model.state_dict()
    assert torch.equal(state["backbone.blocks.1.attn.position_bias"], hf["transformer.layers.1.dec_attn.r_r_bias"])
    assert torch.equal(state["backbone.blocks.0.mlp.proj.weight"], hf["transformer.layers.0.pos_ff.CoreNet.3.weight"])
    # Adaptive input: the reference's emb_layers[i](id - lo) @ emb_projs[i].T * sqrt(d_model), in float64.
    hf = {name: t.double() for name, t in hf.items()}
    ids = torch.tensor([[3, 15, 33]])
    expected = torch.stack([F.linear(hf[f"transformer.word_emb.emb_layers.{i}.weight"][t - lo],
                                     hf[f"transformer.word_emb.emb_projs.{i}"])
                            for t, i, lo in ((3, 0, 0), (15, 1, 10), (33, 2, 20))])[None] * 4.0
    assert_fp_close(model.backbone.embed(ids), expected, terms=16)  # one product of up to 16 terms
    # Adaptive softmax: head log-softmax over [shortlist ‖ cluster logits] of hidden @ out_projs[0], plus a
    # tail's log-softmax of hidden @ out_projs[i] (ProjectedAdaptiveLogSoftmax._compute_logit).
    h = torch.randn(16)

    def logits(i, extra_w=None, extra_b=None):
        w, b = hf[f"crit.out_layers.{i}.weight"], hf[f"crit.out_layers.{i}.bias"]
        if extra_w is not None:
            w, b = torch.cat([w, extra_w]), torch.cat([b, extra_b])
        return F.log_softmax(F.linear(h.double() @ hf[f"crit.out_projs.{i}"], w, b), -1)

    head = logits(0, hf["crit.cluster_weight"], hf["crit.cluster_bias"])
    expected = torch.cat([head[:10], head[10] + logits(1), head[11] + logits(2)])
    # float32 against float64: 2 products of up to 16 terms, a log-softmax over up to 20, the head's log-prob added
    assert_fp_close(model.head.log_probs(h, model.backbone.embed), expected, terms=20, depth=4)
    native = ctxlm.convert(folder, tmp_path / "native")
    assert (native / "word_vocab.txt").is_file()
    torch.testing.assert_close(ctxlm.load(native)(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_hub_layout_errors_and_the_pickled_vocabulary(tmp_path):
    state = hf_layout_state(HF_CONFIG)
    missing = dict(state)
    del missing["transformer.layers.1.dec_attn.r_net.weight"]
    with pytest.raises(UserError, match="r_net"):
        ctxlm.load(write_hub_folder(tmp_path / "missing", state=missing))
    untied = dict(state, **{"crit.out_projs.1": torch.randn(16, 8)})
    with pytest.raises(UserError, match="crit.out_projs.1 differs"):
        ctxlm.load(write_hub_folder(tmp_path / "untied", state=untied))
    bare = {k: v for k, v in state.items() if not k.startswith("crit.")}
    with pytest.raises(UserError, match="TransfoXLLMHeadModel"):
        ctxlm.load(write_hub_folder(tmp_path / "bare", state=bare))
    folder = write_hub_folder(tmp_path / "pickle", vocab=False)
    (folder / "vocab.pkl").write_bytes(b"\x80\x04K\x00.")  # never opened
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ctxlm.load(folder).tokenizer is None
    assert any("vocab.pkl" in str(w.message) for w in caught)
    with pytest.raises(UserError, match="attn_type"):
        ctxlm.load(write_hub_folder(tmp_path / "absolute", hf=dict(HF_CONFIG, attn_type=1)))


# ---- the word tokenizer ------------------------------------------------------------------------------------------


def test_word_tokenizer_trains_saves_and_round_trips(tmp_path, corpus_dir):
    tok = WordTokenizer.train(corpus_dir / "train.txt")
    assert tok.words[:2] == ["<eos>", "<unk>"] and tok.kind == "transformer-xl"
    assert (tok.eos_id, tok.unk_id, tok.pad_id) == (0, 1, 0)
    text = "the cat sees a red ball .\nmy sister follows the river ."
    ids = tok.encode(text, add_eos=True)
    assert ids.count(tok.eos_id) == 2 and ids[-1] == tok.eos_id and tok.unk_id not in ids
    assert tok.decode(ids) == text.replace("\n", " ")
    assert tok.encode(tok.decode(ids, skip_special_tokens=False)) == ids
    assert tok.encode("the zebra") == [tok.index["the"], tok.unk_id]
    assert tok.encode_batch(["a\n\ncat\n"], add_eos=True) == [[tok.index["a"], 0, 0, tok.index["cat"], 0]]
    tok.save(tmp_path)
    again = WordTokenizer.from_files(tmp_path)
    assert again.words == tok.words and again.fingerprint() == tok.fingerprint()
    small = WordTokenizer.train([corpus_dir / "train.txt"], vocab_size=5)
    assert small.vocab_size == 5 and small.words[2] in ("the", ".")
    assert all(w in ("<eos>", "<unk>") or tok.index[w] < 5 for w in small.words)
    frequent = WordTokenizer.train(corpus_dir, min_count=10 ** 6)
    assert frequent.words == ["<eos>", "<unk>"]


def test_word_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="twice"):
        WordTokenizer(["<eos>", "<unk>", "a", "a"])
    with pytest.raises(UserError, match="unknown-word"):
        WordTokenizer(["<eos>", "a"])
    with pytest.raises(UserError, match="one word"):
        WordTokenizer(["<eos>", "<unk>", "a b"])
    with pytest.raises(UserError, match="word_tokenizer.json: missing"):
        WordTokenizer.from_files(tmp_path)
    with pytest.raises(UserError, match="vocab_size"):
        WordTokenizer.train(tmp_path, vocab_size=1)
    tok = WordTokenizer(["<eos>", "<unk>", "a"])
    with pytest.raises(UserError, match="outside the vocabulary"):
        tok.decode([3])
    (tmp_path / "vocab.json").write_text(json.dumps({"<eos>": 0, "<unk>": 2, "a": 1}))
    assert WordTokenizer.from_vocab_file(tmp_path / "vocab.json").words == ["<eos>", "a", "<unk>"]
    (tmp_path / "vocab.json").write_text(json.dumps({"<eos>": 0, "<unk>": 5}))
    with pytest.raises(UserError, match="ids"):
        WordTokenizer.from_vocab_file(tmp_path / "vocab.json")
