"""ELMo: the projected LSTM cell against a step-by-step reference, no leakage in either direction, padding,
the character tokenizer, and the model's layer contract."""

import pytest
import torch

import ctxlm
from ctxlm.config import ElmoConfig, config_from_dict
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.nn.recurrent import ProjectedLSTM, reverse_padded
from ctxlm.tokenizers.characters import SPECIALS, CharTokenizer, word_characters
from tolerances import assert_fp_close, fp_close

TINY = dict(dim=8, cell_dim=12, char_dim=4, n_highway=1, filters=[[1, 4], [2, 6], [3, 6]], dropout=0.0)
# tiny_model's float32 rounding (tests/tolerances.py): sums of up to 16 terms (16 filters; 8 + 8 inputs to the
# gates), through 24 chained stages: the character CNN's 3, 2 products per LSTM step along the longest path (at
# most 9 steps + 1 layer), the softmax.
FP32 = dict(terms=16, depth=24)


def reference_lstmp(x, w_ih, w_hh, b, w_hr, cell_clip, proj_clip):
    """LSTMP written out one sequence and one step at a time, gates (i, f, g, o) as in the ELMo papers' code."""
    batch, time, _ = x.shape
    cell, proj = w_hh.shape[0] // 4, w_hr.shape[0]
    out = torch.zeros(batch, time, proj, dtype=torch.float64)
    for row in range(batch):
        h, c = torch.zeros(proj, dtype=torch.float64), torch.zeros(cell, dtype=torch.float64)
        for t in range(time):
            z = w_ih @ x[row, t] + w_hh @ h + b
            i, f, g, o = (z[k * cell:(k + 1) * cell] for k in range(4))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c = torch.clamp(c, -cell_clip, cell_clip)
            h = torch.clamp(w_hr @ (torch.sigmoid(o) * torch.tanh(c)), -proj_clip, proj_clip)
            out[row, t] = h
    return out


@pytest.mark.numeric
def test_projected_lstm_with_clipping_matches_a_step_by_step_reference():
    torch.manual_seed(0)
    layer = ProjectedLSTM(5, 7, 3, cell_clip=0.5, proj_clip=0.3).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(4.0)  # large weights, so that both clips are reached
    x = torch.randn(2, 6, 5, dtype=torch.float64) * 2
    lstm = layer.lstm
    expected = reference_lstmp(x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0,
                               lstm.weight_hr_l0, 0.5, 0.3)
    got = layer(x)
    # both in float64: gate sums of 5 + 3 terms, 2 products per step over 6 steps
    assert_fp_close(got, expected, terms=8, depth=12)
    assert got.abs().max().item() == pytest.approx(0.3)  # the projection clip was reached
    unclipped = ProjectedLSTM(5, 7, 3).double()
    unclipped.load_state_dict(layer.state_dict())
    assert not fp_close(unclipped(x), got, terms=8, depth=12)  # and clipping changed the result


@pytest.mark.numeric
def test_stepwise_recurrence_equals_the_fused_nn_lstm_without_clipping():
    torch.manual_seed(0)
    layer = ProjectedLSTM(6, 10, 4)
    x = torch.randn(3, 9, 6)
    assert_fp_close(layer.stepwise(x), layer(x), terms=10, depth=18)  # gate sums of 6 + 4, 2 products x 9 steps


def test_reverse_padded_reverses_only_the_real_steps():
    x = torch.arange(2 * 5).view(2, 5, 1)
    lengths = torch.tensor([5, 3])
    out = reverse_padded(x, lengths)
    assert out[:, :, 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    assert torch.equal(reverse_padded(out, lengths), x)


def tiny_model(**overrides):
    torch.manual_seed(0)
    tokenizer = CharTokenizer([*SPECIALS, "the", "cat", "sat", "on", "mat", "."])
    model = build_model(ElmoConfig(vocab_size=tokenizer.vocab_size, **{**TINY, **overrides}))
    model.tokenizer = tokenizer
    return model.eval(), tokenizer


def batch_of(tokenizer, texts):
    encodings = tokenizer.encode_text_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in encodings])
    return ids, ids != 0


@pytest.mark.parametrize("clip", [None, 3.0])
def test_neither_direction_sees_the_tokens_it_predicts(clip):
    """Forward state t depends on tokens <= t only, backward state t on tokens >= t only (and never on padding)."""
    model, tokenizer = tiny_model(cell_clip=clip, proj_clip=clip)
    ids, mask = batch_of(tokenizer, ["the cat sat on the mat .", "the cat ."])
    captured = {}
    model.backbone.token_encoder.register_forward_hook(lambda m, i, out: captured.update(tokens=out) or out)
    hidden = model(tokenizer.char_ids(ids), mask=mask).hidden  # characters: one token vector per position
    tokens = captured["tokens"]
    dim = model.config.dim
    for layer in (1, 2):
        for row, length in enumerate(mask.sum(1).tolist()):
            for t in range(length):
                forward_grad, = torch.autograd.grad(hidden.states[layer][row, t, :dim].sum(), tokens,
                                                    retain_graph=True)
                backward_grad, = torch.autograd.grad(hidden.states[layer][row, t, dim:].sum(), tokens,
                                                     retain_graph=True)
                seen_forward = forward_grad[row].abs().sum(-1) > 0
                seen_backward = backward_grad[row].abs().sum(-1) > 0
                assert seen_forward.nonzero().flatten().tolist() == list(range(t + 1))
                assert seen_backward.nonzero().flatten().tolist() == list(range(t, length))
                other = 1 - row
                assert forward_grad[other].abs().sum() == 0 and backward_grad[other].abs().sum() == 0


@pytest.mark.numeric
def test_changing_a_word_moves_only_the_losses_that_may_see_it():
    model, tokenizer = tiny_model()
    ids, _ = batch_of(tokenizer, ["the cat sat on the mat ."])
    changed = ids.clone()
    k = 3
    changed[0, k] = tokenizer.words.id("mat")

    def per_position(x):
        top = model(x).hidden.last[0]
        forward_top, backward_top = top.split(model.config.dim, dim=-1)
        return model.log_probs(forward_top), model.log_probs(backward_top)

    (f0, b0), (f1, b1) = per_position(ids), per_position(changed)
    # forward position t predicts t + 1: positions < k never read token k
    assert_fp_close(f0[:k], f1[:k], **FP32)
    assert not fp_close(f0[k:], f1[k:], **FP32)
    assert_fp_close(b0[k + 1:], b1[k + 1:], **FP32)
    assert not fp_close(b0[:k + 1], b1[:k + 1], **FP32)


@pytest.mark.numeric
def test_a_padded_row_equals_the_same_text_alone():
    model, tokenizer = tiny_model(cell_clip=3.0, proj_clip=3.0)
    ids, mask = batch_of(tokenizer, ["the cat sat on the mat .", "the cat ."])
    together = model(ids, mask=mask).hidden
    alone_ids, _ = batch_of(tokenizer, ["the cat ."])
    alone = model(alone_ids).hidden
    for a, b in zip(together.states, alone.states, strict=True):
        assert_fp_close(a[1, :5], b[0], **FP32)


@pytest.mark.numeric
def test_hidden_states_and_layer_groups_follow_the_contract():
    model, tokenizer = tiny_model()
    ids, mask = batch_of(tokenizer, ["the cat sat ."])
    hidden = model(ids, mask=mask).hidden
    assert len(hidden.states) == 3 and all(s.shape == (1, 6, 16) for s in hidden.states)
    token_layer = hidden.states[0]
    assert torch.equal(token_layer[..., :8], token_layer[..., 8:])  # one tensor, twice
    groups = model.layer_groups()
    assert len(groups) == 3
    assert sum(p.numel() for g in groups for p in g) == sum(p.numel() for p in model.parameters())
    # word ids and character ids give the same states
    chars = tokenizer.char_ids(ids)
    assert_fp_close(model(chars, mask=mask).hidden.last, hidden.last, **FP32)
    assert len(model.backbone(ids, mask=mask, n_blocks=1).states) == 2


@pytest.mark.numeric
def test_the_loss_is_the_mean_of_both_directions_and_a_save_round_trips(tmp_path):
    model, tokenizer = tiny_model()
    ids, mask = batch_of(tokenizer, ["the cat sat on the mat .", "the dog sat ."])  # "dog": outside the softmax
    targets = tokenizer.softmax_targets(ids)
    assert targets[1, 2] == tokenizer.unk_id and (targets[mask.logical_not()] == -100).all()
    out = model(ids, mask=mask, targets=targets)
    assert out.loss.item() == pytest.approx(((out.forward_loss + out.backward_loss) / 2).item())
    top = model(ids, mask=mask).hidden.last
    forward_lp = model.log_probs(top[..., :8])[:, :-1]
    expected = torch.nn.functional.nll_loss(forward_lp.reshape(-1, forward_lp.shape[-1]), targets[:, 1:].reshape(-1))
    # the same states; a log-softmax over 10 words, then a mean over 16 positions
    assert_fp_close(out.forward_loss, expected, terms=16, depth=2)
    ctxlm.save(model, tmp_path / "elmo")
    loaded = ctxlm.load(tmp_path / "elmo")
    assert loaded.tokenizer.words.words == tokenizer.words.words
    # the same weights and shapes in one process: the same kernels, the same bits
    torch.testing.assert_close(loaded(ids, mask=mask).hidden.last, model(ids, mask=mask).hidden.last, atol=0, rtol=0)


@pytest.mark.numeric
def test_adaptive_softmax_scores_a_loss():
    model, tokenizer = tiny_model()
    config = ElmoConfig(vocab_size=10, softmax="adaptive", adaptive_cutoffs=[5], **TINY)
    adaptive = build_model(config)
    adaptive.tokenizer = tokenizer
    ids, mask = batch_of(tokenizer, ["the cat sat on the mat ."])
    out = adaptive(ids, mask=mask, targets=tokenizer.softmax_targets(ids))
    assert out.loss.item() > 0
    total = adaptive.log_probs(out.hidden.last[..., :8]).exp().sum(-1)
    assert_fp_close(total, torch.ones(1, 9), terms=10, depth=3)  # logits, log-softmaxes, a sum over 10 words
    with pytest.raises(UserError, match="adaptive_cutoffs"):
        ElmoConfig(vocab_size=10, softmax="adaptive", adaptive_cutoffs=[12]).validate()


def test_word_characters_follow_allennlp():
    assert word_characters("<S>")[:4] == [259, 257, 260, 261]
    assert word_characters("</S>")[:4] == [259, 258, 260, 261]
    assert word_characters("<pad>") == [0] * 50
    assert word_characters("cat")[:6] == [259, 100, 98, 117, 260, 261]
    assert word_characters("é")[:4] == [259, 196, 170, 260]  # UTF-8 bytes, + 1
    long = word_characters("x" * 80)
    assert len(long) == 50 and long[-1] == 260 and long[-2] == ord("x") + 1


def test_char_tokenizer_encodes_opens_and_round_trips(tmp_path):
    tokenizer = CharTokenizer([*SPECIALS, "the", "cat"], vocab_size=5)
    enc = tokenizer.encode_pair("The cat, <unk>!", "the zebra")
    words = [tokenizer.words.words[i] for i in enc.ids]
    assert words == ["<S>", "The", "cat", ",", "<unk>", "!", "</S>", "the", "zebra", "</S>"]
    assert enc.word_ids == [None, 0, 1, 2, 3, 4, None, 0, 1, None] and enc.segments[-1] == 1
    assert enc.offsets[1] == (0, 3) and enc.word_starts() == [1, 2, 3, 4, 5, 7, 8]
    assert tokenizer.softmax_targets(torch.tensor(enc.ids)).tolist()[:3] == [1, 3, 3]  # "The": not in the softmax
    assert len(tokenizer.encode_text("a b c d e f", max_length=4).ids) == 4
    cut = tokenizer.encode_pair("a b c d", "e", max_length=5)
    assert [tokenizer.words.words[i] for i in cut.ids] == ["<S>", "a", "</S>", "e", "</S>"]
    tokenizer.save(tmp_path)
    again = CharTokenizer.from_files(tmp_path)
    assert again.words.words == tokenizer.words.words and again.vocab_size == 5
    (tmp_path / "words.txt").write_text("the\ncat\n")
    with pytest.raises(UserError, match="starts with"):
        CharTokenizer.from_files(tmp_path)


def test_char_tokenizer_trains_by_frequency(tmp_path):
    (tmp_path / "train.txt").write_text("b a b\nc b a\n")
    (tmp_path / "valid.txt").write_text("zebra a\n")
    tokenizer = CharTokenizer.train([tmp_path / "train.txt"], vocab_size=6, extra_files=[tmp_path / "valid.txt"])
    assert tokenizer.words.words == [*SPECIALS, "b", "a", "c", "zebra"] and tokenizer.vocab_size == 6


def test_elmo_config_round_trips_and_refuses_bad_fields():
    config = ElmoConfig(**TINY)
    assert config_from_dict(config.to_dict()) == config
    with pytest.raises(UserError, match="filters"):
        config_from_dict({**config.to_dict(), "filters": [[3]]})
    with pytest.raises(UserError, match="cell_clip"):
        config_from_dict({**config.to_dict(), "cell_clip": "3"})
    assert config_from_dict({**config.to_dict(), "cell_clip": None}).cell_clip is None


def test_word_ids_need_a_tokenizer():
    model = build_model(ElmoConfig(**TINY))
    with pytest.raises(UserError, match="character ids"):
        model(torch.tensor([[1, 2]]))


@pytest.mark.numeric
@pytest.mark.fp32  # exact semantics: each mode is its manual computation
@pytest.mark.parametrize("layers, manual", [
    ("last", lambda s: s[2]),
    ("second-to-last", lambda s: s[1]),
    ("sum", lambda s: s[1] + s[2]),
    ("all", lambda s: torch.stack(s, -2)),
    (0, lambda s: s[0]),
    ([2, 0], lambda s: torch.cat([s[2], s[0]], -1)),
])
def test_embed_layer_modes_on_elmo(layers, manual):
    model, tokenizer = tiny_model()
    ids, _ = batch_of(tokenizer, ["the cat sat on the mat ."])
    with torch.no_grad():
        states = [s[0] for s in model(ids).hidden.states]
    assert_fp_close(ctxlm.embed("the cat sat on the mat .", model, layers=layers, pool="none"), manual(states),
                    **FP32)
    words = ctxlm.embed(["the cat sat", "unseen words here ."], model, layers=layers, pool="words")
    assert [len(w) for w in words] == [3, 4]  # one vector per word, the <S> and </S> markers left out
    with pytest.raises(UserError, match="at least 4 layers"):
        ctxlm.embed("the cat", model, layers="concat-last-4")


@pytest.mark.numeric
@pytest.mark.fp32
def test_scalar_mix_over_elmo_layers_is_equation_1():
    from ctxlm.nn.scalar_mix import ScalarMix

    model, _ = tiny_model()
    states = ctxlm.embed(["the cat sat .", "on the mat ."], model, layers="all")  # (2, 3, 16)
    mix = ScalarMix(3)
    with torch.no_grad():
        mix.s.copy_(torch.tensor([0.5, -1.0, 2.0]))
        mix.gamma.fill_(1.7)
    weights = torch.softmax(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), 0)  # the reference in float64
    expected = 1.7 * (weights[:, None] * states.double()).sum(-2)
    assert_fp_close(mix(states), expected, terms=3, depth=2)  # a softmax of 3 scalars, a weighted sum of 3 layers
