"""XLNet: parity with `transformers` on random local models (content stream, segments, padding, memory, the query
stream under a permutation), the relative-position pieces, and the converter's refusals."""

import json

import pytest
import torch

import ctxlm

transformers = pytest.importorskip("transformers")

from ctxlm.checkpoint import load_weights  # noqa: E402
from ctxlm.config import XLNetConfig, load_config  # noqa: E402
from ctxlm.convert import from_hub_folder  # noqa: E402
from ctxlm.convert.hf_xlnet import config_from_hf, state_dict_from_hf  # noqa: E402
from ctxlm.errors import UserError  # noqa: E402
from ctxlm.models.xlnet import XLNetLanguageModel  # noqa: E402
from ctxlm.nn.attention import bidirectional_relative_positions, bidirectional_relative_shift  # noqa: E402
from ctxlm.nn.peft import LoRA, add_adapters, add_lora, peft_parameters  # noqa: E402
from ctxlm.tokenizers import Tokenizer  # noqa: E402
from tolerances import assert_fp_close  # noqa: E402

LAYERS, HEADS, HEAD_DIM, INNER, VOCAB, MEM = 2, 4, 8, 96, 67, 5


def fp32() -> dict:
    """Both sides' float32 rounding (tests/tolerances.py): sums of up to INNER terms (the feed-forward's second
    product; the width and the positions are fewer), through the embedding, the blocks and the head."""
    return dict(terms=max(INNER, HEADS * HEAD_DIM), depth=LAYERS + 2)


def reference_pair(cls=None, **overrides):
    """A random `transformers` XLNet scaled so that every term matters (unit-scale products, biases and segment
    vectors of the size of the queries), and the ctxlm model converted from its weights."""
    torch.manual_seed(0)
    config = transformers.XLNetConfig(vocab_size=VOCAB, d_model=HEADS * HEAD_DIM, n_layer=LAYERS, n_head=HEADS,
                                      d_inner=INNER, dropout=0.0, mem_len=MEM, **overrides)
    ref = (cls or transformers.XLNetLMHeadModel)(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "layer_norm" in name or name.endswith("bias") and p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif name.endswith(("rel_attn.o",)):
                p.normal_(0.0, (HEADS * HEAD_DIM) ** -0.5)
            elif name.endswith(("rel_attn.q", "rel_attn.k", "rel_attn.v", "rel_attn.r", "layer_1.weight",
                                "layer_2.weight")):
                p.normal_(0.0, p.shape[-1 if "layer_" in name else 0] ** -0.5)
            else:  # word embeddings, mask_emb, r_w/r_r/r_s biases, seg_embed
                p.normal_(0.0, 0.5)
    state = ref.state_dict()
    ours = XLNetLanguageModel(config_from_hf(config.to_dict())).eval()
    ours.load_state_dict(state_dict_from_hf(state, ours.config))
    return ref, ours


def inputs(time=11, seed=1):
    torch.manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, time))
    segments = torch.zeros_like(ids)
    segments[:, 6:] = 1
    lengths = torch.tensor([time, time - 3, 5])
    mask = torch.arange(time)[None] < lengths[:, None]
    return ids, segments, mask, lengths


@pytest.mark.numeric
def test_content_stream_matches_reference_with_segments_and_padding():
    ref, ours = reference_pair(transformers.XLNetModel)
    ids, segments, mask, lengths = inputs()
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long(), token_type_ids=segments, output_hidden_states=True)
        got = ours.backbone(ids, mask=mask, segments=segments)
    assert len(got.states) == LAYERS + 1 == len(expected.hidden_states)
    for i, n in enumerate(lengths.tolist()):  # real positions only: padding carries no meaning
        for layer, (a, b) in enumerate(zip(got.states, expected.hidden_states, strict=True)):
            assert_fp_close(a[i, :n], b[i, :n], **fp32(), msg=f"row {i}, layer {layer}")


@pytest.mark.numeric
def test_memory_of_a_previous_segment_matches_reference():
    ref, ours = reference_pair(transformers.XLNetModel)
    first, _, _, _ = inputs(time=7, seed=2)
    second, segments, _, _ = inputs(time=9, seed=3)
    with torch.no_grad():
        ref_first = ref(first, use_mems=True)
        expected = ref(second, mems=ref_first.mems, token_type_ids=segments, use_mems=True,
                       output_hidden_states=True)
        ours_first = ours.backbone(first)
        got = ours.backbone(second, memory=ours_first.memory, segments=segments)
    for layer, (a, b) in enumerate(zip(ours_first.memory, ref_first.mems, strict=True)):
        assert a.shape[1] == MEM
        assert_fp_close(a, b.transpose(0, 1), **fp32(), msg=f"memory of layer {layer}")
    for layer, (a, b) in enumerate(zip(got.states, expected.hidden_states, strict=True)):
        assert_fp_close(a, b, **fp32(), msg=f"layer {layer}")
    for a, b in zip(got.memory, expected.mems, strict=True):  # the memory rolls on: the last MEM positions
        assert_fp_close(a, b.transpose(0, 1), **fp32())


def permutation_inputs(time=10, n_predict=3, seed=4):
    """A random factorisation order per row; its last n_predict positions are predicted. perm_mask: position i
    may not see j unless j comes before i in the order (the reference's convention, 1 = hidden)."""
    torch.manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, time))
    order = torch.stack([torch.randperm(time) for _ in range(2)])
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(time).expand(2, -1))
    perm_mask = rank[:, None, :] >= rank[:, :, None]
    predict_at = order[:, -n_predict:]
    return ids, perm_mask, predict_at


@pytest.mark.numeric
def test_query_stream_logits_match_reference_under_a_permutation():
    ref, ours = reference_pair()
    ids, perm_mask, predict_at = permutation_inputs()
    segments = torch.zeros_like(ids)
    segments[:, 4:] = 1
    target_mapping = torch.nn.functional.one_hot(predict_at, ids.shape[1]).float()
    with torch.no_grad():
        expected = ref(ids, perm_mask=perm_mask.float(), target_mapping=target_mapping, token_type_ids=segments,
                       output_hidden_states=True)
        got = ours(ids, perm_mask=perm_mask, predict_at=predict_at, segments=segments)
    assert got.logits.shape == (2, 3, VOCAB)
    assert_fp_close(got.logits, expected.logits, **fp32())
    content = expected.hidden_states[0::2]  # (h, g) pairs per layer: the content stream, under the permutation
    for layer, (a, b) in enumerate(zip(got.hidden.states, content, strict=True)):
        assert_fp_close(a, b, **fp32(), msg=f"content stream, layer {layer}")


@pytest.mark.numeric
def test_content_logits_without_a_permutation_match_reference():
    ref, ours = reference_pair()
    ids, segments, _, _ = inputs()
    with torch.no_grad():
        expected = ref(ids, token_type_ids=segments).logits
        got = ours(ids, segments=segments).logits
    assert_fp_close(got, expected, **fp32())


def test_bidirectional_shift_reads_each_key_at_its_distance():
    q_len, past = 4, 3
    k_len = past + q_len
    distances = torch.arange(k_len, -q_len, -1)  # the rows of bidirectional_relative_positions
    x = distances.float().expand(2, 1, q_len, -1).contiguous()  # a score that says which distance it was read at
    shifted = bidirectional_relative_shift(x, k_len)
    expected = (past + torch.arange(q_len)[:, None] - torch.arange(k_len)[None, :]).float()
    assert torch.equal(shifted[0, 0], expected)
    positions = torch.tensor([[2, 0], [3, 3]])  # gathered rows agree with the shifted ones
    gathered = bidirectional_relative_shift(x[:, :, :2], k_len, positions)
    assert torch.equal(gathered[:, 0], torch.stack([expected[[2, 0]], expected[[3, 3]]]))


def test_relative_positions_run_both_ways_and_clamp():
    pos = bidirectional_relative_positions(3, 5, 8)
    assert pos.shape == (8, 8)
    assert torch.allclose(pos[5], torch.cat([torch.zeros(4), torch.ones(4)]))  # row k_len: distance 0
    clamped = bidirectional_relative_positions(3, 5, 8, clamp_len=2)
    assert torch.equal(clamped[0], clamped[3]) and torch.equal(clamped[4], pos[4])  # distances 5 and 2; 1
    assert torch.equal(clamped[-1], pos[-1])  # distance -2, within the clamp


def test_converter_refuses_what_it_does_not_read(tmp_path):
    good = transformers.XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=1, n_head=4, d_inner=64).to_dict()
    for change, message in (({"attn_type": "uni"}, "attn_type"), ({"bi_data": True}, "bi_data"),
                            ({"ff_activation": "swish"}, "ff_activation"), ({"model_type": "bert"}, "xlnet")):
        with pytest.raises(UserError, match=message):
            config_from_hf(good | change)
    config = config_from_hf(good)
    with pytest.raises(UserError, match="lacks .* tensor"):
        state_dict_from_hf({"transformer.word_embedding.weight": torch.zeros(VOCAB, 32)}, config)


def test_hub_folder_without_tokenizer_json_is_refused_naming_the_file(tmp_path):
    ref, _ = reference_pair()
    ref.save_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not read")
    with pytest.raises(UserError, match="tokenizer.json.*missing.*spiece.model"):
        from_hub_folder(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "xlnet"


def test_config_round_trips_and_validates():
    config = XLNetConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, mlp_dim=64, mem_len=8)
    assert XLNetConfig(**config.to_dict()) == config
    with pytest.raises(UserError, match="activation"):
        XLNetConfig(activation="tanh").validate()
    with pytest.raises(UserError, match="mem_len"):
        XLNetConfig(mem_len=-1).validate()


@pytest.mark.numeric
def test_convert_a_hub_folder_then_load_it(tmp_path, corpus_dir):
    """`ctxlm.convert` on a folder as `save_pretrained` writes it, with a tokenizer.json beside the weights: the
    converted model loads with `ctxlm.load` and gives the reference's outputs."""
    ref, _ = reference_pair()
    ref.save_pretrained(tmp_path / "hub")
    Tokenizer.train([corpus_dir / "train.txt"], kind="gpt2", vocab_size=300).save(tmp_path / "hub")
    ctxlm.convert(tmp_path / "hub", tmp_path / "ours")
    model = ctxlm.load(tmp_path / "ours")
    assert model.config.model_type == "xlnet" and model.tokenizer.kind == "gpt2"
    ids, segments, mask, _ = inputs()
    with torch.no_grad():
        expected = ref(ids, token_type_ids=segments).logits
        got = model(ids, segments=segments).logits
    assert_fp_close(got, expected, **fp32())


def test_adapters_and_lora_live_in_its_blocks_and_load_back(tmp_path):
    """Both streams run through the blocks' adapters and LoRA updates; a saved adapted model loads as itself."""
    torch.manual_seed(0)
    model = XLNetLanguageModel(XLNetConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, mlp_dim=64,
                                           dropout=0.0, attn_dropout=0.0)).eval()
    ids = torch.randint(0, VOCAB, (1, 8))
    perm_mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    perm_mask[:, :, 5] = True
    predict_at = torch.tensor([[5]])
    with torch.no_grad():
        plain = model(ids, perm_mask=perm_mask, predict_at=predict_at).logits
    assert add_lora(model, 4, targets="qkvo") > 0 and add_adapters(model, 8) > 0
    assert len(peft_parameters(model, "lora")) == 2 * 2 * 4  # A and B of q, k, v, o in each block
    with torch.no_grad():
        lora_only = [m for m in model.modules() if isinstance(m, LoRA)]
        near = model(ids, perm_mask=perm_mask, predict_at=predict_at).logits  # LoRA exact, adapters near identity
        assert (near - plain).abs().max() < 0.1 * plain.abs().max()
        for update in lora_only:
            update.B.normal_(0.0, 0.1)
        moved = model(ids, perm_mask=perm_mask, predict_at=predict_at).logits
    assert (moved - near).abs().max() > 1e-3  # the query stream's projections carry the updates
    model.tokenizer = None
    ctxlm.save(model, tmp_path / "adapted")
    loaded = XLNetLanguageModel(load_config(tmp_path / "adapted" / "config.json")).eval()
    load_weights(loaded, tmp_path / "adapted" / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(ids, perm_mask=perm_mask, predict_at=predict_at).logits, moved)
