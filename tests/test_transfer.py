"""Task heads on every backbone family, fine-tuning end to end, and the fine-tuned model folder."""

import json
import random

import pytest
import torch

import ctxlm
from ctxlm.config import BertConfig, ElmoConfig, GPTConfig
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.tokenizers import CharTokenizer, Tokenizer
from ctxlm.transfer.config import FinetuneConfig
from ctxlm.transfer.data import Example, TaskData, TaskSpec
from ctxlm.transfer.finetune import finetune
from ctxlm.transfer.inputs import TaskBatches, encode_examples
from ctxlm.transfer.model import TaskModel
from ctxlm.transfer.predict import evaluate, parse_inputs, predict
from ctxlm.transfer.strategies import get_strategy
from helpers import metrics_records

ANIMALS = ["cat", "dog", "bird", "horse"]
THINGS = ["house", "ball", "tree", "door"]
VERBS = ["sees", "likes", "finds", "follows"]
FAMILIES = ["gpt2", "gpt", "bert", "elmo"]


def sentence(rng, animal: bool) -> str:
    return f"the {rng.choice(ANIMALS if animal else THINGS)} {rng.choice(VERBS)} the {rng.choice(THINGS)} ."


def synthetic_task(kind: str, n: int = 96, seed: int = 0, order_matters: bool = True) -> TaskData:
    """Learnable in a few dozen steps: does the sentence start with an animal, which choice names one, ..."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        animal = rng.random() < 0.5
        if kind == "single":
            examples.append(Example((sentence(rng, animal),), int(animal)))
        elif kind == "regression":
            examples.append(Example((sentence(rng, animal),), 4.0 * animal))
        elif kind == "pair":  # does either text have an animal? (learnable in either order)
            other = rng.random() < 0.3
            examples.append(Example((sentence(rng, animal), sentence(rng, other)), int(animal or other)))
        elif kind == "choice":
            right = rng.randrange(3)
            choices = [sentence(rng, i == right) for i in range(3)]
            examples.append(Example(("which one has an animal ?", *choices), right))
        else:
            words = sentence(rng, animal).split()
            examples.append(Example(tuple(words), tuple(int(w in ANIMALS) for w in words)))
    spec_kind = "single" if kind == "regression" else kind
    labels = () if kind in ("regression", "choice") else ("O", "B-ANIMAL") if kind == "tag" else ("0", "1")
    metrics = {"regression": ("spearman", "pearson"), "tag": ("entity_f1", "accuracy")}.get(kind, ("accuracy",))
    spec = TaskSpec(f"synthetic-{kind}", spec_kind, labels, metrics, regression=kind == "regression",
                    order_matters=order_matters)
    return TaskData(spec, examples[: n * 3 // 4], examples[n * 3 // 4:])


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, corpus_dir):
    """A saved tiny model of each family with a tokenizer trained on the test corpus."""
    folders = {}
    for family in FAMILIES:
        if family == "elmo":
            tokenizer = CharTokenizer.train([corpus_dir / "train.txt"], vocab_size=100)
            config = ElmoConfig(vocab_size=tokenizer.vocab_size, dim=16, cell_dim=32, char_dim=8, n_highway=1,
                                filters=[[1, 16], [2, 16], [3, 16]], cell_clip=None, proj_clip=None)
        else:
            tokenizer = Tokenizer.train([corpus_dir / "train.txt"], kind="bert" if family == "bert" else family,
                                        vocab_size=200 if family == "bert" else 300)
            config_class = BertConfig if family == "bert" else GPTConfig
            config = config_class(model_type=family, vocab_size=tokenizer.vocab_size, max_positions=48, dim=32,
                                  n_layers=2, n_heads=2)
        torch.manual_seed(0)
        model = build_model(config)
        model.tokenizer = tokenizer
        folders[family] = ctxlm.save(model, tmp_path_factory.mktemp("backbones") / family)
    return folders


def quick(model: str, strategy: str = "full", **kw) -> FinetuneConfig:
    return FinetuneConfig(model=str(model), task="synthetic", strategy=strategy, epochs=kw.pop("epochs", 10),
                          batch_size=16, lr=kw.pop("lr", 2e-3), max_length=48, device="cpu", **kw)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["single", "regression", "pair", "choice", "tag"])
def test_every_head_on_every_family_learns(backbones, tmp_path, family, kind):
    data = synthetic_task(kind)
    model = TaskModel(ctxlm.load(backbones[family]), data.spec, max_length=48)
    encoded = encode_examples(model.tokenizer, data.spec, data.train, decoder=model.decoder, max_length=48)
    batch = TaskBatches(encoded, [e.label for e in data.train], data.spec, model.tokenizer.pad_id, 8).train_batch(0)
    logits = model(batch)
    expected = {"single": (8, 2), "regression": (8, 1), "pair": (8, 2), "choice": (8, 3)}.get(kind)
    assert tuple(logits.shape) == (expected or (8, batch["slot_mask"].shape[1], 2))

    # A randomly initialised character CNN gives every word nearly the same vector (shared begin/end-of-word and
    # padding windows win the max-pooling), so ELMo's loss sits on a plateau for longer before it falls. Regression
    # first learns the mean label (the MSE falls to the labels' variance) and needs longer, at a lower rate, to learn
    # more (the post-LN BERT stays at the mean for 15 epochs at 5e-3).
    regression = kind == "regression"
    epochs = (60 if regression else 40) if family == "elmo" else 30 if regression else 15
    lr = 2e-3 if regression and family != "elmo" else 5e-3
    finetune(quick(backbones[family], epochs=epochs, lr=lr), tmp_path, data=data)
    curve = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in curve if "loss" in r]
    quarter = len(losses) // 4
    assert sum(losses[-quarter:]) < 0.7 * sum(losses[:quarter]), losses
    if regression:  # below what predicting the mean label gives
        labels = torch.tensor([e.label for e in data.train])
        assert sum(losses[-quarter:]) / quarter < 0.8 * labels.var(unbiased=False).item(), losses
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["metrics"]["task"] == data.spec.name and (tmp_path / "loss.png").is_file()


@pytest.mark.parametrize("order_matters", [True, False])
@pytest.mark.fp32
def test_a_decoder_reads_an_ordered_pair_once_and_a_similarity_pair_both_ways(backbones, tmp_path, order_matters):
    """GPT §3.3: entailment is premise, delimiter, hypothesis, one order; similarity has no order, so both
    orderings go through the decoder and their vectors are added. `ctxlm predict` on the fine-tuned folder then
    gives (a, b) and (b, a) different outputs for the first (RTE) and the same for the second (MRPC, STS-B)."""
    data = synthetic_task("pair", n=64, order_matters=order_matters)
    for split in (data.train, data.dev):  # an entailment-like label: does the FIRST text name an animal?
        split[:] = [Example(e.texts, int(e.texts[0].split()[1] in ANIMALS)) for e in split]
    finetune(quick(backbones["gpt2"], epochs=6, lr=5e-3), tmp_path, data=data)
    model = TaskModel.load(tmp_path)
    assert model.spec.order_matters is order_matters
    lines = [f"{e.texts[0]}\t{e.texts[1]}" for e in data.dev]
    swapped = [f"{e.texts[1]}\t{e.texts[0]}" for e in data.dev]
    forward, backward = (predict(model, parse_inputs(x, model.spec, "<test>")) for x in (lines, swapped))
    p = torch.tensor([r["probability"] for r in forward], dtype=torch.float64)
    q = torch.tensor([r["probability"] if r["label"] == f["label"] else 1 - r["probability"]
                      for r, f in zip(backward, forward, strict=True)], dtype=torch.float64)
    if order_matters:  # where one text names an animal and the other does not, the order decides
        assert (p - q).abs().max() > 0.1
    else:  # the same sum of two vectors, added in the other order: float32 rounding of one addition
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
    encoded = encode_examples(model.tokenizer, data.spec, data.dev[:1], decoder=True, max_length=48)
    assert len(encoded[0].sequences) == (1 if order_matters else 2)


def test_built_in_pair_tasks_say_whether_their_order_matters(tmp_path):
    from ctxlm.transfer.data import TASKS, load_task

    assert TASKS["rte"].order_matters and not TASKS["mrpc"].order_matters and not TASKS["stsb"].order_matters
    old = {"name": "mrpc", "kind": "pair", "labels": ["0", "1"], "metrics": ["f1"], "regression": False}
    assert TaskSpec.from_dict(old).order_matters is False  # saved before the flag: trained on both orderings
    assert TaskSpec.from_dict({**old, "kind": "single"}).order_matters is True
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b,label\nthe cat,the dog,1\nthe tree,the cat,0\n" * 6)
    from ctxlm.transfer.data import UserTaskOptions

    ordered = load_task(f"csv:{pairs}", csv_options=UserTaskOptions(text_column="a", text_pair_column="b"))
    similar = load_task(f"csv:{pairs}", csv_options=UserTaskOptions(text_column="a", text_pair_column="b",
                                                                     symmetric=True))
    assert ordered.spec.order_matters and not similar.spec.order_matters
    with pytest.raises(UserError, match="--pair-column"):
        load_task(f"csv:{pairs}", csv_options=UserTaskOptions(text_column="a", symmetric=True))


def test_feature_extraction_leaves_the_backbone_unchanged(backbones, tmp_path):
    data = synthetic_task("single")
    finetune(quick(backbones["bert"], "features", epochs=20, head_lr=1e-2), tmp_path, data=data)
    before = ctxlm.load(backbones["bert"]).state_dict()
    after = ctxlm.load(tmp_path / "model").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["dev_accuracy"] > 0.8, metrics


def test_gradual_unfreezing_changes_the_top_layer_first(backbones, tmp_path):
    data = synthetic_task("single", n=64)  # 3 steps per epoch, 2 epochs: the head alone, then + the top group
    finetune(quick(backbones["gpt2"], "gradual:unfreeze_every=3", epochs=2), tmp_path, data=data)
    before = ctxlm.load(backbones["gpt2"])
    after = ctxlm.load(tmp_path / "model")
    changed = [any(not torch.equal(a, b) for a, b in zip(ga, gb, strict=True))
               for ga, gb in zip(before.layer_groups(), after.layer_groups(), strict=True)]
    assert changed == [False, False, True]  # embeddings, block 1 frozen; block 2 (+ final norm) trained


def test_chain_thaw_ends_with_every_group_trained(backbones, tmp_path):
    data = synthetic_task("single", n=64)  # 3 steps per epoch, 3 epochs: 9 steps, 5 stages of 2 (the last: 3)
    finetune(quick(backbones["gpt2"], "chain-thaw:unfreeze_every=2", epochs=3), tmp_path, data=data)
    before, after = ctxlm.load(backbones["gpt2"]), ctxlm.load(tmp_path / "model")
    changed = [any(not torch.equal(a, b) for a, b in zip(ga, gb, strict=True))
               for ga, gb in zip(before.layer_groups(), after.layer_groups(), strict=True)]
    assert changed == [True, True, True]


def assert_loss_falls(run_dir, factor: float = 0.8) -> None:
    """The mean training loss of the last quarter of the logged steps is well below that of the first. (These
    tiny backbones are random: what trains on top of a frozen one learns slower than full fine-tuning.)"""
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    quarter = len(losses) // 4
    assert sum(losses[-quarter:]) < factor * sum(losses[:quarter]), losses


def trainable_reported(text: str) -> int:
    import re

    return int(re.search(r"trainable parameters: ([\d,]+) of", text).group(1).replace(",", ""))


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_adapters_train_only_adapters_layer_norms_and_the_head(backbones, tmp_path, capsys, family):
    data = synthetic_task("single")
    lr = {"bert": 3e-2, "gpt2": 1e-2}[family]
    finetune(quick(backbones[family], f"adapters:adapter_dim=8,lr={lr}", epochs=15), tmp_path, data=data)
    before, after = ctxlm.load(backbones[family]).state_dict(), ctxlm.load(tmp_path / "model")
    assert after.config.adapter_dim == 8  # a normal model folder whose config builds the adapters
    adapted = after.state_dict()
    added = [k for k in adapted if k not in before]
    assert added and all("adapter" in k for k in added)
    for name, value in before.items():
        same = torch.equal(value, adapted[name][:len(value)])  # the decoder's task-token rows were appended
        assert same != ("norm" in name and ".blocks." in name), name  # block LayerNorms train, nothing else
    head = sum(p.numel() for p in TaskModel.load(tmp_path).head.parameters())
    blocks_norms = sum(v.numel() for k, v in before.items() if "norm" in k and ".blocks." in k)
    assert trainable_reported(capsys.readouterr().out) == sum(adapted[k].numel() for k in added) + blocks_norms + head
    assert_loss_falls(tmp_path)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.fp32
def test_lora_trains_low_rank_updates_merged_into_a_plain_folder(backbones, tmp_path, capsys, family):
    data = synthetic_task("single")
    finetune(quick(backbones[family], "lora:lora_rank=4,lr=1e-2", epochs=15), tmp_path, data=data)
    before, after = ctxlm.load(backbones[family]), ctxlm.load(tmp_path / "model")
    assert after.config.lora_rank == 0  # merged: a plain model of the original architecture
    old, new = before.state_dict(), after.state_dict()
    assert old.keys() == new.keys()
    dim = before.config.dim
    for name, value in old.items():
        if name.endswith("attn.qkv.weight"):
            q, k, v = (torch.equal(value[i * dim:(i + 1) * dim], new[name][i * dim:(i + 1) * dim]) for i in range(3))
            assert (q, k, v) == (False, True, False), name  # the default targets: q and v
        else:
            assert torch.equal(value, new[name][:len(value)]), name
    head = sum(p.numel() for p in TaskModel.load(tmp_path).head.parameters())
    lora = before.config.n_layers * 2 * (4 * dim + dim * 4)  # A (r, dim) and B (dim, r) for q and for v
    assert trainable_reported(capsys.readouterr().out) == lora + head
    assert_loss_falls(tmp_path)
    labelled = predict(TaskModel.load(tmp_path), parse_inputs(["the cat sees the house ."], data.spec, "<test>"))
    assert labelled[0]["label"] in data.spec.labels


def test_auxiliary_lm_loss_needs_a_decoder(backbones, tmp_path):
    with pytest.raises(UserError, match="decoder"):
        finetune(quick(backbones["bert"], "gpt"), tmp_path, data=synthetic_task("single"))
    finetune(quick(backbones["gpt2"], "gpt", epochs=1), tmp_path / "gpt", data=synthetic_task("single"))


@pytest.mark.fp32
def test_fine_tuned_folder_evaluates_and_predicts_like_the_run(backbones, tmp_path):
    data = synthetic_task("tag")
    result = finetune(quick(backbones["bert"]), tmp_path, data=data)
    model = TaskModel.load(tmp_path)
    assert ctxlm.load(tmp_path / "model").config.model_type == "bert"  # still a plain checkpoint too
    from ctxlm.transfer.inputs import TaskBatches as Batches
    from ctxlm.transfer.metrics import compute_metrics
    from ctxlm.transfer.predict import gather_predictions

    encoded = encode_examples(model.tokenizer, data.spec, data.dev, decoder=False, max_length=48)
    source = Batches(encoded, [e.label for e in data.dev], data.spec, model.tokenizer.pad_id, 16)
    preds, _ = gather_predictions(model, source, torch.device("cpu"))
    assert compute_metrics(data.spec, preds, source.labels)["entity_f1"] == pytest.approx(result["dev_entity_f1"])
    labelled = predict(model, parse_inputs(["the cat sees the house ."], data.spec, "<test>"))
    assert len(labelled[0]["label"]) == 6 and set(labelled[0]["label"]) <= set(data.spec.labels)
    with pytest.raises(UserError, match="does not match"):
        evaluate(model, "sst2")


def test_resumed_fine_tuning_matches_an_uninterrupted_one(backbones, tmp_path):
    data = synthetic_task("single", n=64)
    full = finetune(quick(backbones["gpt2"], "ulmfit", epochs=4), tmp_path / "a", data=data)
    stopped = finetune(quick(backbones["gpt2"], "ulmfit", epochs=4, max_minutes=0.0), tmp_path / "b", data=data)
    assert stopped["steps"] == 1 and (tmp_path / "b" / "checkpoint").is_dir()  # unfinished: the checkpoint stays
    resumed = finetune(quick(backbones["gpt2"], "ulmfit", epochs=4), tmp_path / "b", data=data, resume=True)
    assert resumed["steps"] == full["steps"] and not (tmp_path / "b" / "checkpoint").exists()
    a, b = (ctxlm.load(tmp_path / run / "model").state_dict() for run in "ab")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    assert resumed["dev_accuracy"] == full["dev_accuracy"]


# -- a floor on the steps (min_steps): 100 labels, batch 32, 3 epochs would be 12 steps ---------------------------
def few_labels(model: str, strategy: str = "full", **kw) -> FinetuneConfig:
    return FinetuneConfig(model=str(model), task="synthetic", strategy=strategy, epochs=3, batch_size=32, lr=2e-3,
                          max_length=48, device="cpu", **kw)


@pytest.fixture
def counted_steps(monkeypatch) -> list[int]:
    """The optimizer steps the trainer takes, counted where it takes them."""
    from ctxlm.train import Trainer

    steps, step = [], Trainer.train_step

    def counting(self):
        steps.append(self.step)
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", counting)
    return steps


def test_min_steps_trains_that_many_steps_with_the_schedule_spread_over_them(backbones, tmp_path, counted_steps):
    data = synthetic_task("single", n=134)  # 100 training examples: 4 batches of 32 an epoch
    assert len(data.train) == 100
    plain = finetune(few_labels(backbones["gpt2"]), tmp_path / "plain", data=data)
    assert plain["steps"] == len(counted_steps) == 12  # unchanged without the floor
    counted_steps.clear()
    floored = finetune(few_labels(backbones["gpt2"], min_steps=200), tmp_path / "floor", data=data)
    assert floored["steps"] == len(counted_steps) == 200 and counted_steps == list(range(200))
    records = metrics_records(tmp_path / "floor")
    # the decay runs over 200 steps (over 12 the rate would be 0 from step 12 on); an evaluation each stretched epoch
    rate = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert rate[100] == pytest.approx(2e-3 * get_strategy("full").lr_factor(99, 200)) and rate[100] > 1e-3
    assert [r["step"] for r in records if "valid_accuracy" in r] == [67, 134, 200]
    counted_steps.clear()
    finetune(few_labels(backbones["gpt2"], min_steps=10), tmp_path / "low", data=data)
    assert len(counted_steps) == 12  # a floor below epochs x batches changes nothing


def test_min_steps_stretches_gradual_unfreezing_to_a_stage_per_epoch_of_the_floor(backbones, tmp_path):
    """ulmfit over 200 steps in 3 epochs: stages of 67 steps (the head, + the top block, + the block below); the
    embeddings would thaw at step 201. Stages of the 4 real batches would thaw them at step 12."""
    data = synthetic_task("single", n=134)
    finetune(few_labels(backbones["gpt2"], "ulmfit", min_steps=200, evals_per_epoch=0), tmp_path, data=data)
    before, after = ctxlm.load(backbones["gpt2"]), ctxlm.load(tmp_path / "model")
    changed = [any(not torch.equal(a, b) for a, b in zip(ga, gb, strict=True))
               for ga, gb in zip(before.layer_groups(), after.layer_groups(), strict=True)]
    assert changed == [False, True, True]
    assert [r["step"] for r in metrics_records(tmp_path) if "valid_accuracy" in r] == [200]  # 0: once, at the end


def test_a_resumed_run_under_min_steps_ends_as_an_uninterrupted_one(backbones, tmp_path):
    data = synthetic_task("single", n=134)
    full = finetune(few_labels(backbones["gpt2"], "ulmfit", min_steps=60), tmp_path / "a", data=data)
    stopped = finetune(few_labels(backbones["gpt2"], "ulmfit", min_steps=60, max_minutes=0.0), tmp_path / "b",
                       data=data)
    assert stopped["steps"] == 1
    resumed = finetune(few_labels(backbones["gpt2"], "ulmfit", min_steps=60), tmp_path / "b", data=data, resume=True)
    assert resumed["steps"] == full["steps"] == 60
    a, b = (ctxlm.load(tmp_path / run / "model").state_dict() for run in "ab")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("value", [0, -5, 2.5, True])
def test_min_steps_must_be_a_positive_count(value):
    with pytest.raises(UserError, match="min_steps"):
        FinetuneConfig(model="m", task="t", min_steps=value)


# -- the command line ------------------------------------------------------------------------------------------
def write_csv(path, data: TaskData) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "stars"])
        for e in data.train:
            writer.writerow([e.texts[0], ["bad", "good"][e.label]])


@pytest.mark.default_precision
def test_cli_finetune_predict_evaluate_compare(backbones, tmp_path, monkeypatch, capsys):
    from helpers import run_cli

    train = tmp_path / "reviews.csv"
    write_csv(train, synthetic_task("single"))
    task = ["--task", f"csv:{train}", "--text-column", "review", "--label-column", "stars", "--epochs", 10,
            "--lr", 5e-3, "--device", "cpu", "--batch-size", 16]
    code, out, err = run_cli(monkeypatch, capsys, "finetune", "--model", backbones["gpt2"], *task,
                             "--out", tmp_path / "run")
    assert code in (0, None), err
    assert "dev_accuracy" in out and (tmp_path / "run" / "model" / "task.json").is_file()

    lines = "the cat sees the house .\n\nthe tree likes the ball .\n"
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(lines))
    code, out, err = run_cli(monkeypatch, capsys, "predict", tmp_path / "run")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code in (0, None) and [r["label"] for r in rows] == ["good", "bad"], out

    code, out, _ = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "run", "--task", f"csv:{train}",
                           "--text-column", "review", "--label-column", "stars")
    assert code in (0, None) and "accuracy" in out

    code, out, err = run_cli(monkeypatch, capsys, "compare", "--model", backbones["bert"], *task,
                             "--strategies", "features,slanted", "--seeds", "0,1", "--out", tmp_path / "cmp")
    assert code in (0, None), err
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| features |" in table and "| slanted |" in table and (tmp_path / "cmp" / "compare.png").is_file()
    assert len(json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]) == 4


@pytest.mark.parametrize("args, fragment", [
    (["--task", "nope"], "unknown task"),
    (["--task", "sst2", "--strategy", "nope"], "unknown strategy"),
    (["--task", "sst2", "--strategy", "gradual:unfreeze_every=0"], "unfreeze_every"),
    (["--task", "sst2", "--strategy", "lora:lora_rank=0"], "lora_rank must be at least 1"),
    (["--task", "sst2", "--strategy", "adapters:bottleneck=8"], "bad override 'bottleneck=8'"),
    (["--task", "csv:missing.csv"], "missing.csv"),
])
def test_cli_bad_task_or_strategy(backbones, tmp_path, monkeypatch, capsys, args, fragment):
    from helpers import assert_user_error, run_cli

    monkeypatch.chdir(tmp_path)
    assert_user_error(run_cli(monkeypatch, capsys, "finetune", "--model", backbones["bert"], *args, "--out", "run"),
                      fragment)


def test_adapters_on_elmo_are_a_one_line_error(backbones, tmp_path, monkeypatch, capsys):
    from helpers import assert_user_error, run_cli

    train = tmp_path / "reviews.csv"
    write_csv(train, synthetic_task("single", n=16))
    assert_user_error(run_cli(monkeypatch, capsys, "finetune", "--model", backbones["elmo"], "--task", f"csv:{train}",
                              "--text-column", "review", "--label-column", "stars", "--strategy", "adapters",
                              "--out", tmp_path / "run"), "GPT, GPT-2, BERT and XLNet", "elmo")


def test_predict_rejects_malformed_input_lines(backbones, tmp_path, monkeypatch, capsys):
    from helpers import assert_user_error, run_cli

    data = synthetic_task("pair", n=32)
    finetune(quick(backbones["bert"], epochs=1), tmp_path / "run", data=data)
    bad = tmp_path / "pairs.txt"
    bad.write_text("first text\tsecond text\nno tab here\n")
    assert_user_error(run_cli(monkeypatch, capsys, "predict", tmp_path / "run", "--input", bad), "pairs.txt:2", "tab")


def test_a_published_style_gpt2_vocabulary_gets_the_task_tokens(backbones, tmp_path):
    """Published GPT-2 has no <|start|>/<|delimiter|>/<|extract|>: they are added and the embeddings grow."""
    from ctxlm.tokenizers import TASK_TOKENS

    trained = ctxlm.load(backbones["gpt2"]).tokenizer
    model_json = json.loads(trained.backend.to_str())["model"]
    kept = [t for t in sorted(model_json["vocab"], key=model_json["vocab"].get) if t not in TASK_TOKENS.values()]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(kept)}))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_json["merges"]]
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = Tokenizer.from_files(tmp_path / "tok", kind="gpt2")
    assert tokenizer.start_id is None
    torch.manual_seed(0)
    lm = build_model(GPTConfig(vocab_size=tokenizer.vocab_size, max_positions=48, dim=32, n_layers=2, n_heads=2))
    lm.tokenizer = tokenizer
    old_rows = lm.backbone.embed.tokens.weight.detach().clone()
    data = synthetic_task("pair", n=16)
    model = TaskModel(lm, data.spec, max_length=48)
    assert model.tokenizer.vocab_size == len(old_rows) + 3 == lm.config.vocab_size
    assert torch.equal(lm.backbone.embed.tokens.weight[:len(old_rows)], old_rows)
    finetune(quick(ctxlm.save(lm, tmp_path / "grown"), epochs=1), tmp_path / "run", data=data)
    assert TaskModel.load(tmp_path / "run").lm.config.vocab_size == len(old_rows) + 3


def test_transfer_never_imports_qa():
    """transfer/ knows no task by name: question answering registers itself from the layer above (ctxlm.qa)."""
    import subprocess
    import sys

    code = ("import sys, ctxlm.transfer.finetune, ctxlm.transfer.model, ctxlm.transfer.predict, "
            "ctxlm.transfer.compare; print([m for m in sys.modules if m.startswith('ctxlm.qa')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
