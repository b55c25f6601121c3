"""Converted random-initialised `transformers` BERT models match the reference to float32 rounding (about 1e-5)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ctxlm.convert.hf_bert import config_from_hf, state_dict_from_hf  # noqa: E402
from ctxlm.models.bert import BertModel  # noqa: E402
from tolerances import assert_fp_close  # noqa: E402

pytestmark = pytest.mark.numeric

CONFIGS = [  # (layers, heads, head width, intermediate, vocab)
    (2, 4, 16, 128, 97),
    (3, 6, 16, 200, 211),
]


def fp32(layers, heads, head_dim, intermediate, vocab) -> dict:
    """Both sides' float32 rounding (tests/tolerances.py): sums of up to `intermediate` terms (the MLP's second
    product; the hidden size and the 13 positions are fewer), through the embeddings, the blocks and a head."""
    return dict(terms=max(intermediate, heads * head_dim), depth=layers + 2)


def reference_pair(layers, heads, head_dim, intermediate, vocab, cls=None):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=heads * head_dim, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=intermediate,
                                     max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    ref = (cls or transformers.BertForPreTraining)(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif p.dim() == 2 and "embeddings" not in name:  # (out, in) products of unit scale, not 0.02's: order-1
                p.normal_(0.0, p.shape[1] ** -0.5)  # activations, so that a wrong GELU form (tanh) shows, at 1e-3
    state = ref.state_dict()
    ours_config = config_from_hf(config.to_dict(), state)
    ours = BertModel(ours_config).eval()
    ours.load_state_dict(state_dict_from_hf(state, ours_config))
    return ref, ours


def padded_pairs(vocab):
    torch.manual_seed(1)
    ids = torch.randint(5, vocab, (3, 13))
    segments = torch.zeros_like(ids)
    segments[:, 7:] = 1
    lengths = torch.tensor([13, 10, 6])
    mask = torch.arange(13)[None] < lengths[:, None]
    return ids, segments, mask, lengths


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"L{s[0]}-H{s[1]}x{s[2]}")
def test_pretraining_model_matches_reference(spec):
    ref, ours = reference_pair(*spec)
    ids, segments, mask, lengths = padded_pairs(spec[4])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long(), token_type_ids=segments, output_hidden_states=True)
        got = ours(ids, mask=mask, segments=segments)
    assert len(got.hidden.states) == spec[0] + 1
    for i, n in enumerate(lengths.tolist()):  # real positions only: padding carries no meaning
        for layer, (a, b) in enumerate(zip(got.hidden.states, expected.hidden_states, strict=True)):
            assert_fp_close(a[i, :n], b[i, :n], **fp32(*spec), msg=f"layer {layer}")
        assert_fp_close(got.mlm_logits[i, :n], expected.prediction_logits[i, :n], **fp32(*spec))
    assert_fp_close(got.nsp_logits, expected.seq_relationship_logits, **fp32(*spec))


def test_masked_positions_score_only_those():
    _, ours = reference_pair(*CONFIGS[0])
    ids, segments, mask, _ = padded_pairs(CONFIGS[0][4])
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    chosen[0, 3] = chosen[2, 1] = True
    with torch.no_grad():
        full = ours(ids, mask=mask, segments=segments).logits
        part = ours(ids, mask=mask, segments=segments, masked_positions=chosen).logits
    assert_fp_close(part, full[chosen], terms=64, depth=2)  # the same states; the head's 2 products of 64 terms


@pytest.mark.parametrize("layout", ["BertModel", "BertForMaskedLM"])
def test_layouts_without_some_heads(layout):
    ref, ours = reference_pair(*CONFIGS[0], cls=getattr(transformers, layout))
    config = ours.config
    assert (config.pooler, config.mlm_head, config.nsp_head) == (
        (True, False, False) if layout == "BertModel" else (False, True, False))
    ids, segments, mask, lengths = padded_pairs(CONFIGS[0][4])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long(), token_type_ids=segments)
        got = ours(ids, mask=mask, segments=segments)
    if layout == "BertModel":
        assert_fp_close(got.pooled, expected.pooler_output, **fp32(*CONFIGS[0]))
        assert got.logits is None
    else:
        for i, n in enumerate(lengths.tolist()):
            assert_fp_close(got.logits[i, :n], expected.logits[i, :n], **fp32(*CONFIGS[0]))


def test_hub_checkpoint_with_a_wrong_shape_or_missing_tensor_names_it(tmp_path):
    from safetensors.torch import load_file, save_file

    import ctxlm
    from ctxlm.errors import UserError

    ref, _ = reference_pair(*CONFIGS[0], cls=transformers.BertModel)
    ref.save_pretrained(tmp_path / "hub")
    weights = tmp_path / "hub" / "model.safetensors"
    state = load_file(weights)
    state["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(100, 64)
    save_file(state, weights)
    with pytest.raises(UserError, match=r"'backbone\.blocks\.1\.mlp\.fc\.weight' has shape \(100, 64\), "
                                        r"the config expects \(128, 64\)"):
        ctxlm.load(tmp_path / "hub")
    del state["encoder.layer.1.intermediate.dense.weight"]
    save_file(state, weights)
    with pytest.raises(UserError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight"):
        ctxlm.load(tmp_path / "hub")


def test_native_checkpoint_missing_a_tensor_names_it(tmp_path):
    from safetensors.torch import load_file, save_file

    import ctxlm
    from ctxlm.errors import UserError

    _, ours = reference_pair(*CONFIGS[0])
    folder = ctxlm.save(ours, tmp_path / "bert")
    state = load_file(folder / "model.safetensors")
    del state["nsp.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(UserError, match=r"tensor 'nsp\.bias' is missing"):
        ctxlm.load(folder)
