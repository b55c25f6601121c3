"""Transformer-XL pretraining with recurrence: batch rows continue across steps, the memory is carried, loss
falls, resuming is exact (the memory is saved with the checkpoint), evaluation reads the validation stream in
order with any memory length, generation with memory equals recomputing the context, and the CLI's run folder
loads back."""

import json
import math

import numpy as np
import pytest
import torch

import ctxlm
from ctxlm.generate import generate_ids
from ctxlm.models import build_model
from ctxlm.pretrain import xl
from ctxlm.pretrain.causal_lm import LMData
from ctxlm.pretrain.corpus import TokenSpan
from ctxlm.pretrain.xl import SegmentRecurrence, StreamBatches, eval_segments, evaluate_xl, pretrain_xl
from ctxlm.train import TrainConfig
from helpers import Interrupt, dying_at, metrics_records, run_cli, tiny_config
from tolerances import assert_fp_close, fp_close

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_dir):
    """A Transformer-XL trained for 40 steps on the tiny corpus's words: (model, run folder)."""
    run_dir = tmp_path_factory.mktemp("xl") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CTXLM_CACHE", str(run_dir.parent / "cache"))
        train = TrainConfig(steps=40, lr=1e-2, warmup_steps=3, eval_every=20, save_every=20, log_every=5)
        model = pretrain_xl(LMData.resolve(corpus_dir), run_dir, tiny_config("transformer-xl"), train, tgt_len=8,
                            batch_size=8)
    return model, run_dir


def test_batch_rows_continue_across_steps_and_epochs_restart():
    ids = np.arange(1003, dtype=np.uint16)
    batches = StreamBatches(TokenSpan(ids), tgt_len=7, batch_size=4)  # 4 streams of 250 tokens
    assert len(batches) == 249 // 7
    first = batches.batch(0)
    assert first.x[:, 0].tolist() == [0, 250, 500, 750] and first.starts_epoch
    for i in range(len(batches) - 1):
        a, b = batches.batch(i), batches.batch(i + 1)
        torch.testing.assert_close(a.y, a.x + 1)  # targets follow inputs
        torch.testing.assert_close(b.x[:, 0], a.y[:, -1])  # row r of step t + 1 starts where row r of step t ended
        assert not b.starts_epoch
    again = batches.batch(len(batches))  # the next epoch reads the same segments again, from an empty memory
    assert again.starts_epoch and torch.equal(again.x, first.x)


def test_the_memory_is_carried_between_segments_and_reset_at_epoch_start():
    torch.manual_seed(0)
    model = build_model(tiny_config("transformer-xl", mem_len=5))
    seen = []

    class Spy(torch.nn.Module):
        config = model.config

        def forward(self, ids, **kwargs):
            seen.append(kwargs["memory"])
            return model(ids, **kwargs)

    batches = StreamBatches(TokenSpan(np.arange(200) % 100), tgt_len=4, batch_size=2)
    spy, objective = Spy(), SegmentRecurrence(batches)
    spy.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    for i in range(3):
        objective(spy, batches.batch(i))
    assert seen[0] is None
    assert [m.shape for m in seen[1]] == [(2, 4, 32)] * 2 and [m.shape for m in seen[2]] == [(2, 5, 32)] * 2
    with pytest.raises(RuntimeError, match="in order"):
        objective(spy, batches.batch(4))  # segment 3 was skipped: its memory is not the one held
    objective(spy, batches.batch(len(batches)))
    assert seen[-1] is None


def test_pretraining_reduces_the_loss(trained):
    _, run_dir = trained
    logged = metrics_records(run_dir)
    losses = [r["loss"] for r in logged if "loss" in r]
    valid = [r for r in logged if "valid_loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses
    assert len(valid) == 2 and valid[-1]["valid_loss"] < valid[0]["valid_loss"], valid
    assert valid[-1]["valid_perplexity"] == pytest.approx(math.exp(valid[-1]["valid_loss"]))
    assert (run_dir / "checkpoint" / "word_vocab.txt").is_file() and (run_dir / "loss.png").is_file()
    assert [p.name for p in (run_dir / "memory").iterdir()] == ["segment-40.safetensors"]


@pytest.mark.numeric
def test_segmented_evaluation_with_memory_equals_one_pass_over_the_whole_text(trained):
    model, _ = trained
    ids = torch.tensor(model.tokenizer.encode("the cat sees the house .\na dog likes a red ball .\n" * 4,
                                              add_eos=True))
    span = TokenSpan(ids.numpy())
    segmented = evaluate_xl(model, span, tgt_len=5, mem_len=len(ids), progress=False)
    with torch.no_grad():
        whole = model(ids[None, :-1], mem_len=0, targets=ids[None, 1:]).loss
    assert segmented["eval_tokens"] == len(ids) - 1
    # float32 rounding of both (tests/tolerances.py): sums over up to all the text's positions as keys (or the MLP's
    # 64, the vocabulary), through the embedding, 2 blocks, the log-softmax and the mean
    terms = max(len(ids), model.config.mlp_dim, model.config.vocab_size)
    assert_fp_close(segmented["valid_loss"], float(whole), terms=terms, depth=5, dtype=torch.float32)
    assert sum(y.shape[1] for _, y in eval_segments(span, 5)) == len(ids) - 1  # the last segment is shorter


def test_longer_memory_helps_on_a_repetitive_corpus(trained, corpus_dir):
    model, _ = trained
    span = TokenSpan(xl.tokenize_stream(corpus_dir / "valid.txt", model.tokenizer).ids)
    loss = {m: evaluate_xl(model, span, tgt_len=4, mem_len=m, streams=2, progress=False)["valid_loss"]
            for m in (0, 16, 64)}
    assert loss[0] != loss[16]
    assert loss[16] < loss[0] - 0.1, loss  # the first words of each segment see the previous ones
    assert loss[64] <= loss[0], loss  # more memory than in training does not hurt


def test_resumed_run_matches_uninterrupted(tmp_path, corpus_dir, monkeypatch):
    def run(run_dir, resume=False):
        train = TrainConfig(steps=8, lr=1e-2, warmup_steps=2, eval_every=4, save_every=4, log_every=1)
        return pretrain_xl(LMData.resolve(corpus_dir), run_dir, tiny_config("transformer-xl", dropout=0.2), train,
                           tgt_len=8, batch_size=4, resume=resume, eval_batches=3)

    reference = run(tmp_path / "a")

    Killed = dying_at(StreamBatches, 6)  # as if the process died in step 7; the last checkpoint is step 4

    def interrupted(run_dir):
        with monkeypatch.context() as patch:
            patch.setattr(xl, "StreamBatches", Killed)
            with pytest.raises(Interrupt):
                run(run_dir)

    def same(a, b):
        return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    interrupted(tmp_path / "b")
    resumed = run(tmp_path / "b", resume=True)
    assert same(reference, resumed)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rs]  # noqa: E731
    assert strip(metrics_records(tmp_path / "a")) == strip(metrics_records(tmp_path / "b"))

    # Without the saved memory the resumed run rebuilds it (no gradient, evaluation mode): it runs, but is not
    # the uninterrupted run, which shows that the memory saved beside the checkpoint is what makes resume exact.
    interrupted(tmp_path / "c")
    for file in (tmp_path / "c" / "memory").iterdir():
        file.unlink()
    rebuilt = run(tmp_path / "c", resume=True)
    assert not same(reference, rebuilt)


@pytest.mark.numeric
@pytest.mark.parametrize("mem_len", [32, 6])
@pytest.mark.fp32
def test_generation_with_memory_equals_recomputing_the_context(mem_len):
    torch.manual_seed(0)
    model = build_model(tiny_config("transformer-xl", mem_len=mem_len, vocab_size=50))
    prompts = [[5, 6, 7, 8, 9], [3, 1], [4, 4, 4], [9, 8, 7, 6, 5]]
    cached = generate_ids(model, prompts, max_new_tokens=12, return_scores=True)
    recomputed = generate_ids(model, prompts, max_new_tokens=12, return_scores=True, use_cache=False)
    fp32 = dict(terms=64, depth=5)  # float32 rounding: sums of up to 64 terms (the MLP), embedding, 2 blocks, head
    if mem_len == 32:  # every context (at most 5 + 12 tokens) fits in the memory: the same computation
        assert cached.tokens == recomputed.tokens
        assert_fp_close(cached.scores, recomputed.scores, **fp32)
    else:  # the memory keeps the last 6 positions (prompts go through 6 at a time): later scores differ
        assert cached.scores.shape == recomputed.scores.shape == (4, 12, 50)
        assert not fp_close(cached.scores[:, -1], recomputed.scores[:, -1], **fp32)
        longer = generate_ids(model, prompts, max_new_tokens=12, return_scores=True, mem_len=32)
        assert_fp_close(longer.scores, recomputed.scores, **fp32)
    for i, prompt in enumerate(prompts):  # rows of a batch equal prompts alone
        alone = generate_ids(model, [prompt], max_new_tokens=12, return_scores=True)
        assert alone.tokens[0] == cached.tokens[i]
    sampled = [generate_ids(model, prompts, max_new_tokens=8, temperature=0.9, top_k=10, top_p=0.9, seed=3).tokens
               for _ in range(2)]
    assert sampled[0] == sampled[1]


@pytest.mark.default_precision
def test_text_generation_and_eos(trained):
    model, _ = trained
    texts = ctxlm.generate(model, ["the cat", "a dog sees"], max_new_tokens=30)
    assert all(t.startswith(" ") and len(t.split()) >= 1 for t in texts), texts
    tok = model.tokenizer
    out = generate_ids(model, [tok.encode("the cat sees")], max_new_tokens=30, eos_id=tok.eos_id).tokens[0]
    assert out[-1] == tok.eos_id and tok.eos_id not in out[:-1]  # a sentence, then the end of its line


@pytest.mark.default_precision
def test_cli_pretrains_a_transformer_xl_that_loads_and_generates(monkeypatch, capsys, tmp_path, corpus_dir):
    run_dir = tmp_path / "run"
    result = run_cli(monkeypatch, capsys, "pretrain", "--model", "transformer-xl", "--data", str(corpus_dir), "--out",
                     str(run_dir), "--steps", "4", "--block-size", "8", "--mem-len", "8", "--eval-mem-len", "24",
                     "--batch-size", "4", "--dim", "16", "--heads", "2", "--layers", "2", "--eval-every", "2",
                     "--softmax", "adaptive", "--cutoffs", "6,12")
    assert result.exit_code == 0, result.output
    assert "validation perplexity" in result.output and "memory 24" in result.output and "sample:" in result.output
    model = ctxlm.load(run_dir)
    assert model.config.model_type == "transformer-xl" and model.config.mem_len == 8
    assert model.config.adaptive_cutoffs == [6, 12] and model.config.n_layers == 2
    assert model.tokenizer.kind == "transformer-xl" and model.tokenizer.vocab_size == model.config.vocab_size
    assert json.loads((run_dir / "data.json").read_text())["eval_mem_len"] == 24
    result = run_cli(monkeypatch, capsys, "generate", str(run_dir), "the cat", "--max-new-tokens", "5")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("the cat")  # (4 steps of training may end the line at once)
