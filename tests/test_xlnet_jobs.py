"""XLNet through the jobs, on one tiny model pretrained here by `ctxlm pretrain --model xlnet`: the run folder loads,
fine-tuning (full and LoRA) works on its blocks and sums a text up at its last token, `ctxlm.embed`'s layer modes
read its content stream, and `ctxlm serve` answers for it."""

import json
import sys

import pytest
import torch
from starlette.testclient import TestClient

import ctxlm
from ctxlm.cli import main
from ctxlm.pretrain.job import objective_of
from ctxlm.serve import Limits, Served, create_app
from ctxlm.transfer.data import Example, TaskData, TaskSpec
from ctxlm.transfer.finetune import finetune
from ctxlm.transfer.model import TaskModel, default_pooling
from ctxlm.transfer.predict import parse_inputs, predict
from tolerances import assert_fp_close, default_dtype

ANIMALS, THINGS = ["cat", "dog", "bird"], ["house", "ball", "tree"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus_dir):
    """`ctxlm pretrain --model xlnet` on the test corpus: 4 steps of a 2-layer, 32-wide model."""
    run_dir = tmp_path_factory.mktemp("xlnet") / "run"
    args = ["ctxlm", "pretrain", "--model", "xlnet", "--data", str(corpus_dir), "--out", str(run_dir), "--steps", "4",
            "--block-size", "12", "--mem-len", "12", "--batch-size", "4", "--dim", "32", "--heads", "4",
            "--layers", "2", "--eval-every", "4", "--vocab-size", "300", "--partial-prediction", "4"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CTXLM_CACHE", str(run_dir.parent / "cache"))
        patch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as exit_info:
            main()
    assert exit_info.value.code in (0, None)
    return run_dir


def task_data(n=48, seed=0) -> TaskData:
    """Does the sentence start with an animal?"""
    rng = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        animal = bool(torch.randint(2, (), generator=rng))
        first = (ANIMALS if animal else THINGS)[i % 3]
        examples.append(Example((f"the {first} sees the {THINGS[(i // 3) % 3]} .",), int(animal)))
    spec = TaskSpec("synthetic-single", "single", ("0", "1"), ("accuracy",))
    return TaskData(spec, examples[: n * 3 // 4], examples[n * 3 // 4:])


def test_pretraining_run_loads_as_an_xlnet_with_task_tokens(pretrained):
    model = ctxlm.load(pretrained)
    config, tokenizer = model.config, model.tokenizer
    assert config.model_type == "xlnet" and config.n_layers == 2 and config.mem_len == 12
    assert objective_of(config) == "permutation-lm"
    assert tokenizer.kind == "gpt2" and tokenizer.vocab_size == config.vocab_size
    assert None not in (tokenizer.start_id, tokenizer.delimiter_id, tokenizer.extract_id)  # a summary token last
    with pytest.raises(ctxlm.UserError, match="generation needs a decoder"):  # it has a memory, but no decoder
        ctxlm.generate(model, ["the cat"], max_new_tokens=2)
    data = json.loads((pretrained / "data.json").read_text())
    assert data["partial_prediction"] == 4 and data["mem_len"] == 12
    records = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_perplexity" in r for r in records) and all(r.get("loss", 1.0) > 0 for r in records)


@pytest.mark.fp32
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_finetune_classifies_from_the_last_token(pretrained, tmp_path, strategy):
    lm = ctxlm.load(pretrained)
    assert default_pooling(lm) == "last"  # XLNet's <cls> is at the end: here <|extract|>
    before = {name: p.detach().clone() for name, p in lm.named_parameters()}
    from ctxlm.transfer.config import FinetuneConfig

    config = FinetuneConfig(model=str(pretrained), task="synthetic", strategy=strategy, epochs=2, batch_size=12,
                            lr=5e-3, max_length=16, device="cpu")
    finetune(config, tmp_path, data=task_data(n=32))
    model = TaskModel.load(tmp_path)
    assert model.pooling == "last"
    rows = predict(model, parse_inputs(["the cat sees the house .", "the ball sees the tree ."], model.spec, "<t>"))
    assert len(rows) == 2 and all(0.0 <= r["probability"] <= 1.0 for r in rows)
    tuned = dict(model.lm.named_parameters())
    qkv = "backbone.blocks.0.attn.qkv.weight"
    q_rows, k_rows = slice(0, 32), slice(32, 64)
    assert not torch.equal(tuned[qkv][q_rows], before[qkv][q_rows])
    if strategy == "lora":  # saved merged: only the q and v rows of the attention moved, by a rank-8 update
        assert model.lm.config.lora_rank == 0
        assert torch.equal(tuned[qkv][k_rows], before[qkv][k_rows])
        assert torch.linalg.matrix_rank(tuned[qkv][q_rows] - before[qkv][q_rows]) <= 8
        for name, p in before.items():
            if not name.endswith("attn.qkv.weight"):
                assert torch.equal(tuned[name], p), name
    else:
        assert not torch.equal(tuned["backbone.embed.tokens.weight"], before["backbone.embed.tokens.weight"])


@pytest.mark.default_precision
@pytest.mark.parametrize(("layers", "pool", "shape"), [
    ("last", "last", (32,)), ("second-to-last", "mean", (32,)), ("sum", "mean", (32,)),
    ("concat-last-4", None, None), ("all", "mean", (3, 32)), ((0, -1), "last", (64,)), ("last", "words", (6, 32)),
])
def test_embed_layer_modes_read_the_content_stream(pretrained, layers, pool, shape):
    model = ctxlm.load(pretrained)
    text = "the cat sees the house ."
    if shape is None:  # a 2-layer model has no last 4 layers
        with pytest.raises(ctxlm.UserError, match="needs at least 4 layers"):
            ctxlm.embed([text], model=model, layers=layers)
        return
    vector = ctxlm.embed(text, model=model, layers=layers, pool=pool)
    assert tuple(vector.shape) == shape
    encoding = model.tokenizer.encode_text(text)  # <|start|> text <|extract|>
    assert encoding.ids[0] == model.tokenizer.start_id and encoding.ids[-1] == model.tokenizer.extract_id
    with torch.no_grad():
        states = model.backbone(torch.tensor([encoding.ids])).states
    if (layers, pool) == ("last", "last"):
        want = states[-1][0, -1]
    elif (layers, pool) == ("all", "mean"):
        want = torch.stack([s[0].mean(0) for s in states])
    elif (layers, pool) == ("sum", "mean"):
        want = sum(s[0] for s in states[1:]).mean(0)
    else:
        return
    assert_fp_close(vector, want, terms=64, depth=4, dtype=default_dtype())


@pytest.mark.default_precision
def test_serve_answers_for_xlnet(pretrained):
    model = ctxlm.load(pretrained).eval()
    served = Served("tiny-xlnet", model, None, Limits())
    capabilities = served.capabilities()
    assert capabilities["attention"] and capabilities["memory"] and capabilities["embed"]
    assert not capabilities["generate"] and not capabilities["fill_mask"]  # not a decoder, not a masked LM
    with TestClient(create_app(served)) as c:
        got = c.post("/embed", json={"texts": ["the cat sees the house ."], "layers": "last", "pool": "last"})
        assert got.status_code == 200, got.text
        want = ctxlm.embed(["the cat sees the house ."], model, layers="last", pool="last")[0]
        assert_fp_close(torch.tensor(got.json()["vectors"][0]), want, terms=64, depth=4, dtype=default_dtype())
        tokens = c.post("/tokenize", json={"text": "the cat"}).json()
        assert tokens["special"][0] and tokens["special"][-1]  # framed as tasks read it
        attention = c.post("/attention", json={"text": "the cat sees the house"}).json()
        weights = torch.tensor(attention["attention"][0])  # (heads, queries, keys): both ways, rows of one
        assert weights.shape[0] == 4 and float(weights.triu(1).sum()) > 0
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-3, rtol=0)
        memory = c.post("/memory", json={"segments": ["the cat sees", "a dog likes the house"], "mem_len": 3}).json()
        assert len(memory["segments"][1]["memory"]) == 3  # the last 3 tokens of the first segment
        assert c.post("/generate", json={"prompt": "the cat"}).status_code == 400
