"""`ctxlm pretrain --init MODEL`: continued pretraining from a checkpoint (ULMFiT's stage 2), on tiny models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import ctxlm
from ctxlm.pretrain import causal_lm, job
from ctxlm.pretrain.corpus import BlockBatches
from ctxlm.pretrain.init import start_from
from helpers import (
    Interrupt,
    assert_user_error,
    dying_at,
    metrics_records,
    run_cli,
    tiny,
    tiny_tokenizer,
    write_documents,
)

pytestmark = pytest.mark.fp32  # pretraining's arithmetic; the sample at the end of a run is incidental

GPT_RUN = dict(block_size=16, batch_size=4, lr=3e-3, warmup=5)


def first_validation(run_dir):
    return next(r for r in metrics_records(run_dir) if "valid_loss" in r)


def same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.fixture
def headless_bert(tmp_path, corpus_dir):
    """A tiny BERT saved without its masked-LM and next-sentence heads, as sentence encoders (MiniLM) ship."""
    return tiny("bert", tokenizer=tiny_tokenizer("bert", corpus_dir), mlm_head=False, nsp_head=False,
                max_positions=32, save_to=tmp_path / "headless")


def test_an_init_run_starts_where_its_checkpoint_ended(tmp_path, corpus_dir, isolated_cache):
    general = tmp_path / "general"
    ctxlm.pretrain(model="gpt2", data=corpus_dir, out=general, steps=40, vocab_size=300, layers=1, dim=32, heads=2,
                   eval_every=40, **GPT_RUN)
    ended = first_validation(general)
    assert ended["step"] == 40

    result = ctxlm.pretrain(init=str(general), data=corpus_dir, out=tmp_path / "stage2", steps=2, eval_every=2,
                            **GPT_RUN)
    start = first_validation(tmp_path / "stage2")
    assert start["step"] == 0  # evaluated before the first step: the checkpoint's own figure
    assert start["valid_loss"] == pytest.approx(ended["valid_loss"], rel=1e-6)
    assert result["objective"] == "causal-lm" and result["final"]["step"] == 2
    continued = ctxlm.load(tmp_path / "stage2")
    assert continued.config == ctxlm.load(general).config
    assert continued.tokenizer.backend.to_str() == ctxlm.load(general).tokenizer.backend.to_str()  # not retrained

    # The same network, randomly initialised, starts far higher (about ln 300 = 5.7 nats).
    random_init = tiny("gpt2", tokenizer=continued.tokenizer, n_layers=1, n_heads=2, save_to=tmp_path / "random")
    ctxlm.pretrain(init=str(random_init), data=corpus_dir, out=tmp_path / "scratch", steps=1, **GPT_RUN)
    scratch = first_validation(tmp_path / "scratch")
    assert scratch["step"] == 0 and scratch["valid_loss"] > 5.0
    assert start["valid_loss"] < scratch["valid_loss"] - 1.5


def test_a_headless_bert_gets_a_masked_lm_head_tied_to_its_embeddings(tmp_path, headless_bert):
    model = start_from(headless_bert, family=None, run_dir=tmp_path / "run", resume=False, seed=0, block_size=16,
                       options={})
    loaded = ctxlm.load(headless_bert)
    assert model.config.mlm_head and not model.config.nsp_head and model.nsp is None
    assert model.training and model.tokenizer is not None
    assert all(torch.equal(p, model.state_dict()[name]) for name, p in loaded.state_dict().items())  # kept
    # BERT's head: dense → GELU → LayerNorm and a bias, initialised as BERT does; no decoder matrix of its own
    head = dict(model.mlm.named_parameters())
    assert sorted(head) == ["bias", "norm.bias", "norm.weight", "transform.bias", "transform.weight"]
    assert head["transform.weight"].std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.equal(head["norm.weight"], torch.ones(32)) and not head["bias"].any()
    assert not head["transform.bias"].any() and head["bias"].shape == (model.config.vocab_size,)

    # The decoder is the input embedding matrix itself: the logits are scores against it, and a masked-LM loss
    # sends gradient to the embedding rows of tokens that are not in the input.
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    out = model(ids)
    states = out.hidden.last[0]
    embeddings = model.backbone.embed.tokens.weight
    expected = F.linear(model.mlm.norm(F.gelu(model.mlm.transform(states))), embeddings, model.mlm.bias)
    assert torch.allclose(out.logits[0], expected)
    F.cross_entropy(out.logits[0], torch.tensor([40, 41, 42, 43, 44])).backward()
    assert embeddings.grad[40:45].abs().sum() > 0 and embeddings.grad[100:].abs().sum() > 0


def test_a_headless_bert_continues_by_masked_lm_alone_and_saves_its_head(monkeypatch, capsys, tmp_path, corpus_dir,
                                                                         headless_bert, isolated_cache):
    docs = write_documents(corpus_dir, tmp_path / "docs")
    run = tmp_path / "run"
    result = run_cli(monkeypatch, capsys, "pretrain", "--init", headless_bert, "--data", docs, "--out", run,
                     "--steps", 3, "--block-size", 16, "--batch-size", 4, "--eval-every", 3, "--lr", 1e-3)
    assert result.code == 0, result.err
    assert "new masked-LM head" in result.out and "masked LM (no next-sentence head)" in result.out
    final = next(line for line in result.out.splitlines() if "masked-LM accuracy" in line)
    assert "next-sentence" not in final and "fill-in:" in result.out
    records = metrics_records(run)
    assert records[0]["step"] == 0 and "valid_mlm_loss" in records[0]
    assert not any("nsp" in key for record in records for key in record)

    saved = ctxlm.load(run)
    assert saved.config.mlm_head and not saved.config.nsp_head and saved.mlm is not None
    assert "mlm.decoder.weight" not in saved.state_dict() and saved.mlm.bias.abs().sum() > 0  # trained
    ids = torch.tensor([saved.tokenizer.encode_text("the cat sees the house .").ids])
    logits = saved(ids).logits
    assert logits.shape == (1, ids.shape[1], saved.config.vocab_size)
    with torch.no_grad():  # still tied after the round trip: the head scores against the embeddings
        saved.backbone.embed.tokens.weight[7] += 1.0
    assert not torch.allclose(saved(ids).logits[0, :, 7], logits[0, :, 7])
    assert ctxlm.embed(["the cat sees the house ."], str(run)).shape == (1, 32)
    # ... and the run continues in turn, head and all, with nothing created this time
    result = run_cli(monkeypatch, capsys, "pretrain", "--init", run, "--data", docs, "--out", tmp_path / "again",
                     "--steps", 1, "--block-size", 16, "--batch-size", 4, "--model", "bert")
    assert result.code == 0, result.err
    assert "new masked-LM head" not in result.out


def test_an_interrupted_init_run_resumes_exactly(tmp_path, corpus_dir, isolated_cache, monkeypatch):
    init = tiny("gpt2", corpus=corpus_dir, dropout=0.2, save_to=tmp_path / "init")  # dropout: the RNG matters too

    def run(run_dir, **options):
        return job.pretrain(data=corpus_dir, out=run_dir, steps=8, eval_every=4, save_every=4, **GPT_RUN,
                            **options)["model"]

    reference = run(tmp_path / "a", init=str(init))

    Killed = dying_at(BlockBatches, 5)  # as if the process died in step 6; the last checkpoint is step 4

    with monkeypatch.context() as patch:
        patch.setattr(causal_lm, "BlockBatches", Killed)
        with pytest.raises(Interrupt):
            run(tmp_path / "b", init=str(init))
    assert json.loads((tmp_path / "b" / "init.json").read_text()) == {"init": str(init)}
    shutil.rmtree(init)  # the checkpoint holds everything: the init folder is not read again
    resumed = run(tmp_path / "b", resume=True)  # --resume alone: the run's init.json says it continued init
    assert same_weights(reference, resumed)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rs]  # noqa: E731
    assert strip(metrics_records(tmp_path / "a")) == strip(metrics_records(tmp_path / "b"))
    assert metrics_records(tmp_path / "b")[0]["step"] == 0


@pytest.mark.parametrize(("args", "fragments"), [
    (["--model", "gpt2"], ["is a bert model", "--model says gpt2"]),
    (["--vocab-size", 500], ["--vocab-size 500", "whose vocab_size is 1"]),  # WordPiece made 1xx of 200
    (["--dim", 64], ["--dim 64", "dim is 32"]),
    (["--block-size", 64], ["--block-size 64", "32 positions"]),
])
def test_options_that_contradict_the_checkpoint_say_so(monkeypatch, capsys, tmp_path, corpus_dir, headless_bert,
                                                       args, fragments):
    result = run_cli(monkeypatch, capsys, "pretrain", "--init", headless_bert, "--data", corpus_dir, "--out",
                     tmp_path / "run", "--steps", 1, *(["--block-size", 16] if "--block-size" not in args else []),
                     *args)
    assert_user_error(result, f"--init {headless_bert}", *fragments)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_tokenizer_given_with_init_is_refused(monkeypatch, capsys, tmp_path, corpus_dir, headless_bert):
    result = run_cli(monkeypatch, capsys, "pretrain", "--init", headless_bert, "--tokenizer", headless_bert,
                     "--data", corpus_dir, "--out", tmp_path / "run", "--block-size", 16)
    tokens = ctxlm.load(headless_bert).tokenizer.vocab_size
    assert_user_error(result, "--tokenizer", f"{tokens} tokens", "leave --tokenizer out")


@pytest.mark.parametrize("family", ["elmo", "transformer-xl"])
def test_word_level_families_continue_from_a_checkpoint(monkeypatch, capsys, tmp_path, corpus_dir, isolated_cache,
                                                        family):
    init = tiny(family, corpus=corpus_dir, save_to=tmp_path / "init")
    run = tmp_path / "run"
    result = run_cli(monkeypatch, capsys, "pretrain", "--init", init, "--data", corpus_dir, "--out", run,
                     "--steps", 2, "--block-size", 8, "--batch-size", 4, "--eval-every", 2, "--dropout", 0.05,
                     "--mem-len", 8, "--softmax", "full")
    assert result.code == 0, result.err
    records = metrics_records(run)
    assert [r["step"] for r in records if "valid_loss" in r] == [0, 2]
    saved, before = ctxlm.load(run), ctxlm.load(init)
    assert saved.config.model_type == family and saved.config.dropout == 0.05
    assert saved.config.vocab_size == before.config.vocab_size and saved.config.dim == before.config.dim
    if family == "transformer-xl":
        assert saved.config.mem_len == 8  # a setting, not a size: given, it replaces the checkpoint's 16
    assert not same_weights(saved, before)  # trained
    assert_user_error(run_cli(monkeypatch, capsys, "pretrain", "--init", init, "--data", corpus_dir, "--out",
                              tmp_path / "other", "--softmax", "adaptive", "--block-size", 8),
                      "--softmax adaptive", "softmax is full")


def test_stage_two_as_ulmfit_runs_it_uses_discriminative_and_slanted_rates(tmp_path, corpus_dir, isolated_cache):
    """ULMFiT §3.2, stage 2: the top layer group at the peak rate, each group below / 2.6; slanted triangular
    rates over the run (eq. 3)."""
    from ctxlm.schedules import slanted_triangular
    from ctxlm.train import default_param_groups

    general = tmp_path / "general"
    ctxlm.pretrain(model="gpt2", data=corpus_dir, out=general, steps=4, vocab_size=300, layers=2, dim=32, heads=2,
                   **GPT_RUN)
    model = ctxlm.load(general)
    layer_groups = model.layer_groups()
    top = len(layer_groups) - 1
    groups = default_param_groups(model, 0.1, lr=1e-3, lr_decay=2.6)
    rate_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(rate_of) == len(list(model.parameters()))  # each once
    for k, group in enumerate(layer_groups):
        for p in group:  # a tied weight (the LM decoder is the token embedding) sits in its lowest group
            assert rate_of[id(p)] == pytest.approx(1e-3 / 2.6 ** (top - k))
    assert max(rate_of.values()) == pytest.approx(1e-3) and min(rate_of.values()) == pytest.approx(1e-3 / 2.6 ** top)

    ctxlm.pretrain(init=str(general), data=corpus_dir, out=tmp_path / "stage2", steps=20, lr=1e-3, lr_decay=2.6,
                   schedule="slanted", block_size=16, batch_size=4)
    logged = [r for r in metrics_records(tmp_path / "stage2") if "lr" in r]
    assert [r["step"] for r in logged] == [10, 20]
    for r in logged:  # the first group is the embeddings': the lowest rate, at the schedule's value of that step
        expected = 1e-3 / 2.6 ** top * slanted_triangular(r["step"] - 1, 20, cut_frac=0.1, ratio=32.0)
        assert r["lr"] == pytest.approx(expected)
