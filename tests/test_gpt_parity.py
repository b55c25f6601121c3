"""Converted random-initialised `transformers` GPT / GPT-2 models match the reference to float32 rounding (about
1e-5)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ctxlm.convert.hf_gpt import config_from_hf, state_dict_from_hf  # noqa: E402
from ctxlm.models.gpt import GPTLanguageModel  # noqa: E402
from tolerances import assert_fp_close  # noqa: E402

pytestmark = pytest.mark.numeric

CONFIGS = [  # (family, layers, heads, head width, positions, vocab) — odd sizes on purpose
    ("gpt2", 2, 4, 16, 64, 101),
    ("gpt2", 3, 6, 16, 48, 257),
    ("gpt", 2, 4, 16, 64, 101),
    ("gpt", 3, 6, 16, 48, 257),
]


def fp32(family, n_layer, n_head, head_dim, n_positions, vocab) -> dict:
    """Float32 rounding of these models' outputs (tests/tolerances.py): sums of up to 4 x the width terms (the MLP's
    second product; a log-softmax sums `vocab`), through the embeddings, the blocks, the head and a loss."""
    return dict(terms=max(4 * n_head * head_dim, vocab), depth=n_layer + 3)


def reference_pair(family, n_layer, n_head, head_dim, n_positions, vocab):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, n_positions=n_positions, n_embd=n_head * head_dim, n_layer=n_layer,
                  n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if family == "gpt2":
        ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**common))
    else:
        ref = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**common))
    ref.eval()
    with torch.no_grad():  # random LayerNorm parameters, so a swapped norm cannot pass by accident
        for name, p in ref.named_parameters():
            if "ln" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif p.dim() == 2 and "wte" not in name and "wpe" not in name and "embed" not in name:
                # Conv1D (in, out) products of unit scale, not 0.02's: order-1 activations, so that a wrong GELU
                # form (erf for tanh) shows, at 1e-4
                p.normal_(0.0, p.shape[0] ** -0.5)
    config = config_from_hf(ref.config.to_dict())
    ours = GPTLanguageModel(config).eval()
    ours.load_state_dict(state_dict_from_hf(ref.state_dict(), config))
    return ref, ours


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s[0]}-L{s[1]}-H{s[2]}x{s[3]}-V{s[5]}")
def test_logits_and_hidden_states_match(spec):
    ref, ours = reference_pair(*spec)
    ids = torch.randint(0, spec[5], (3, 17))
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True)
        got = ours(ids)
    assert_fp_close(got.logits, expected.logits, **fp32(*spec))
    assert len(got.hidden.states) == spec[1] + 1
    for layer, (ours_state, ref_state) in enumerate(zip(got.hidden.states, expected.hidden_states, strict=True)):
        assert_fp_close(ours_state, ref_state, **fp32(*spec), msg=f"layer {layer}")


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s[0]}-L{s[1]}-H{s[2]}x{s[3]}-V{s[5]}")
def test_padded_batch_matches_reference(spec):
    ref, ours = reference_pair(*spec)
    lengths = [11, 7, 3]
    ids = torch.randint(0, spec[5], (3, 11))
    mask = torch.arange(11)[None, :] < torch.tensor(lengths)[:, None]  # right padding
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long()).logits
        got = ours(ids, mask=mask).logits
        alone = [ours(ids[i : i + 1, :n]).logits[0] for i, n in enumerate(lengths)]
    for i, n in enumerate(lengths):  # padding positions carry no meaning; real ones must agree
        assert_fp_close(got[i, :n], expected[i, :n], **fp32(*spec))
        assert_fp_close(got[i, :n], alone[i], **fp32(*spec))


def test_left_padded_batch_equals_unpadded_rows():
    _, ours = reference_pair(*CONFIGS[1])
    ids = torch.randint(0, 257, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :4] = False  # row 1 is left-padded by 4
    with torch.no_grad():
        got = ours(ids, mask=mask).logits
        alone = ours(ids[1:, 4:]).logits
    assert_fp_close(got[1, 4:], alone[0], **fp32(*CONFIGS[1]))
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("spec", [CONFIGS[1], CONFIGS[3]], ids=["gpt2", "gpt"])
def test_training_loss_equals_reference_loss(spec):
    ref, ours = reference_pair(*spec)
    ids = torch.randint(0, spec[5], (2, 12))
    with torch.no_grad():
        expected = ref(ids, labels=ids).loss  # the reference shifts the labels itself
        got = ours(ids[:, :-1], targets=ids[:, 1:]).loss
    assert_fp_close(got, expected, **fp32(*spec))
