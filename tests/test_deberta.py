"""DeBERTa (v2/v3 layout): parity with transformers' DebertaV2Model on random local models, the properties that
define disentangled attention and the enhanced mask decoder, and the family through every job (pretrain,
finetune with full and LoRA training, embed's layer modes, serve)."""


import pytest
import torch

from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.nn.disentangled_attention import log_bucket_positions
from tolerances import assert_fp_close

# (layers, heads, head width, intermediate, vocab, position_buckets, max_relative_positions, pos_att_type)
CONFIGS = [
    (2, 4, 8, 96, 97, 8, -1, "p2c|c2p"),  # the v3 layout: 20 tokens reach 5 buckets past the exact ±4
    (2, 2, 16, 64, 61, -1, 6, ["c2p"]),  # no buckets: distances clamped at ±6; one position term (scale sqrt(2d))
]
TIME = 20


def fp32(layers, heads, head_dim, intermediate, *_) -> dict:
    """Both sides' float32 rounding (tests/tolerances.py): sums of up to `intermediate` terms (the MLP's second
    product; the width and the 20 positions are fewer), through the embeddings, the blocks and a head."""
    return dict(terms=max(intermediate, heads * head_dim), depth=layers + 2)


def hf_config(layers, heads, head_dim, intermediate, vocab, buckets, reach, terms, **more):
    transformers = pytest.importorskip("transformers")
    return transformers.DebertaV2Config(
        vocab_size=vocab, hidden_size=heads * head_dim, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, relative_attention=True, position_buckets=buckets,
        max_relative_positions=reach, pos_att_type=terms, share_att_key=True, norm_rel_ebd="layer_norm",
        position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, **more)


def reference_pair(spec, cls_name="DebertaV2Model", **more):
    """A transformers model with weights of order-1 products (as test_bert_parity draws them, so that a wrong
    scale or GELU shows) and its conversion."""
    transformers = pytest.importorskip("transformers")
    from ctxlm.convert.hf_deberta import config_from_hf, state_dict_from_hf

    torch.manual_seed(0)
    config = hf_config(*spec, **more)
    ref = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif p.dim() == 2 and "embeddings" not in name:
                p.normal_(0.0, p.shape[1] ** -0.5)
    state = ref.state_dict()
    ours_config = config_from_hf(config.to_dict(), state)
    ours = build_model(ours_config).eval()
    ours.load_state_dict(state_dict_from_hf(state, ours_config))
    return ref, ours


def padded_batch(vocab):
    torch.manual_seed(1)
    ids = torch.randint(5, vocab, (3, TIME))
    lengths = torch.tensor([TIME, 14, 7])
    mask = torch.arange(TIME)[None] < lengths[:, None]
    return ids, mask, lengths


# ------------------------------------------------------------------------------------------ parity with the reference

@pytest.mark.numeric
@pytest.mark.parametrize("spec", CONFIGS, ids=["v3-buckets", "clamped-c2p-only"])
def test_backbone_matches_debertav2model_on_every_layer(spec):
    ref, ours = reference_pair(spec)
    ids, mask, lengths = padded_batch(spec[4])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        got = ours(ids, mask=mask).hidden.states
    assert len(got) == len(expected) == spec[0] + 1
    for i, n in enumerate(lengths.tolist()):  # real positions only: padding carries no meaning
        for layer, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_fp_close(a[i, :n], b[i, :n], **fp32(*spec), msg=f"row {i}, layer {layer}")


@pytest.mark.numeric
@pytest.mark.parametrize("legacy", [False, True])
def test_mlm_head_matches_debertav2formaskedlm_which_has_no_emd(legacy):
    ref, ours = reference_pair(CONFIGS[0], "DebertaV2ForMaskedLM", legacy=legacy)
    assert ours.config.mlm_head and ours.config.emd_layers == 0  # transformers' model: the head on the top layer
    ids, mask, lengths = padded_batch(CONFIGS[0][4])
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long()).logits
        got = ours(ids, mask=mask).logits
    for i, n in enumerate(lengths.tolist()):
        assert_fp_close(got[i, :n], expected[i, :n], **fp32(*CONFIGS[0]))


def test_log_buckets_are_the_references():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    delta = torch.arange(-600, 601)
    for buckets, reach in [(256, 512), (8, 32), (6, 20)]:
        assert torch.equal(log_bucket_positions(delta, buckets, reach), make_log_bucket_position(delta, buckets, reach))
    exact = log_bucket_positions(delta, 256, 512)
    assert torch.equal(exact[600 - 128:600 + 129], delta[600 - 128:600 + 129])  # ±k/2 exact
    assert exact[600 + 511] == 255 and exact[600 - 511] == -255  # k - 1 at the reach (max_positions - 1)


@pytest.mark.parametrize(("field", "value"), [("conv_kernel_size", 3), ("position_biased_input", True),
                                              ("share_att_key", False), ("type_vocab_size", 2),
                                              ("norm_rel_ebd", "none")])
def test_unsupported_variants_are_refused_naming_the_field(field, value):
    from ctxlm.convert.hf_deberta import config_from_hf

    config = hf_config(*CONFIGS[0]).to_dict() | {field: value}
    with pytest.raises(UserError, match=field):
        config_from_hf(config, {})
    with pytest.raises(UserError, match="v1"):
        config_from_hf(hf_config(*CONFIGS[0]).to_dict() | {"model_type": "deberta"}, {})
