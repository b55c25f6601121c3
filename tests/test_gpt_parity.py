"""Converted random-initialised `transformers` GPT / GPT-2 models match the reference to float32 rounding (about
1e-5)."""

import pytest
import torch

pytest.importorskip("transformers")

from helpers import GPT_CONFIGS, gpt_fp32, gpt_reference_pair  # noqa: E402
from tolerances import assert_fp_close  # noqa: E402

pytestmark = pytest.mark.numeric


@pytest.mark.parametrize("spec", GPT_CONFIGS, ids=lambda s: f"{s[0]}-L{s[1]}-H{s[2]}x{s[3]}-V{s[5]}")
def test_logits_and_hidden_states_match(spec):
    ref, ours = gpt_reference_pair(*spec)
    ids = torch.randint(0, spec[5], (3, 17))
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True)
        got = ours(ids)
    assert_fp_close(got.logits, expected.logits, **gpt_fp32(*spec))
    assert len(got.hidden.states) == spec[1] + 1
    for layer, (ours_state, ref_state) in enumerate(zip(got.hidden.states, expected.hidden_states, strict=True)):
        assert_fp_close(ours_state, ref_state, **gpt_fp32(*spec), msg=f"layer {layer}")


@pytest.mark.parametrize("spec", GPT_CONFIGS, ids=lambda s: f"{s[0]}-L{s[1]}-H{s[2]}x{s[3]}-V{s[5]}")
def test_padded_batch_matches_reference(spec):
    ref, ours = gpt_reference_pair(*spec)
    lengths = [11, 7, 3]
    ids = torch.randint(0, spec[5], (3, 11))
    mask = torch.arange(11)[None, :] < torch.tensor(lengths)[:, None]  # right padding
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask.long()).logits
        got = ours(ids, mask=mask).logits
        alone = [ours(ids[i : i + 1, :n]).logits[0] for i, n in enumerate(lengths)]
    for i, n in enumerate(lengths):  # padding positions carry no meaning; real ones must agree
        assert_fp_close(got[i, :n], expected[i, :n], **gpt_fp32(*spec))
        assert_fp_close(got[i, :n], alone[i], **gpt_fp32(*spec))


def test_left_padded_batch_equals_unpadded_rows():
    _, ours = gpt_reference_pair(*GPT_CONFIGS[1])
    ids = torch.randint(0, 257, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :4] = False  # row 1 is left-padded by 4
    with torch.no_grad():
        got = ours(ids, mask=mask).logits
        alone = ours(ids[1:, 4:]).logits
    assert_fp_close(got[1, 4:], alone[0], **gpt_fp32(*GPT_CONFIGS[1]))
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("spec", [GPT_CONFIGS[1], GPT_CONFIGS[3]], ids=["gpt2", "gpt"])
def test_training_loss_equals_reference_loss(spec):
    ref, ours = gpt_reference_pair(*spec)
    ids = torch.randint(0, spec[5], (2, 12))
    with torch.no_grad():
        expected = ref(ids, labels=ids).loss  # the reference shifts the labels itself
        got = ours(ids[:, :-1], targets=ids[:, 1:]).loss
    assert_fp_close(got, expected, **gpt_fp32(*spec))
