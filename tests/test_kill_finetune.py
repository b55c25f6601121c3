"""kill -9 at random moments of `ctxlm finetune` (a classification task, a tagging task, SQuAD), `ctxlm zeroshot
--out` and `ctxlm embed --output X.jsonl`: whatever the moment, the newest checkpoint loads, and the resumed (or,
killed before the first checkpoint, restarted) run ends with the same weights, the same logged losses and dev
figures, the same output file, as a run that was never interrupted. Also: checkpoints by time, where they fall,
never change a run; `compare` resumes inside an interrupted run; the options' errors are one line.

The runs are real processes, each killed with SIGKILL, forked from one process that imported torch and ctxlm
once (tests/fork_runner.py): a fresh Python for each would spend seconds importing per run."""

import contextlib
import gzip
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctxlm.checkpoint import is_resumable, load_checkpoint
from helpers import Interrupt, animal_articles, assert_user_error, run_cli, synthetic_batches, tiny

RUNNER = Path(__file__).parent / "fork_runner.py"
KILLS = 3  # per job: one at any moment, two while it trains (or writes)
ANIMALS, THINGS, VERBS = ["cat", "dog", "bird"], ["house", "ball", "tree", "door"], ["sees", "likes", "finds"]


# ---------------------------------------------------------------------------------------------------- the runner
class Runner:
    """tests/fork_runner.py: `ctxlm ARGS...` in a forked child, killed after a while or run to its end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, str(RUNNER)], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert json.loads(self.process.stdout.readline())["ready"]

    def run(self, *args, log: Path, wait_for: Path | None = None, after: float | None = None) -> dict:
        request = {"argv": [str(a) for a in args], "log": str(log), "wait_for": wait_for and str(wait_for),
                   "after": after}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def finish(self, *args, log: Path) -> dict:
        done = self.run(*args, log=log)
        assert done["code"] == 0, log.read_text()[-3000:]
        return done

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """$CTXLM_DATA of the runs: a tiny conll2003 (the tagging task)."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)

    def sentences(n: int) -> str:
        lines = []
        for _ in range(n):
            words = ["the", rng.choice(ANIMALS + THINGS), rng.choice(VERBS), "the", rng.choice(ANIMALS + THINGS), "."]
            lines += [f"{w} X X {'B-ANIMAL' if w in ANIMALS else 'O'}" for w in words] + [""]
        return "\n".join(lines) + "\n"

    folder = root / "conll2003"
    folder.mkdir()
    (folder / "train.txt.gz").write_bytes(gzip.compress(sentences(40).encode()))
    (folder / "valid.txt").write_text(sentences(10))
    (folder / "test.txt").write_text(sentences(10))
    return root


@pytest.fixture(scope="module")
def runner(data, tmp_path_factory):
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env = {**os.environ, **threads, "CTXLM_DATA": str(data), "CTXLM_CACHE": str(tmp_path_factory.mktemp("cache")),
           "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    runner = Runner(env)
    yield runner
    runner.close()


# ------------------------------------------------------------------------------------------------------ the jobs
@pytest.fixture(scope="module")
def bert(tmp_path_factory, corpus_dir) -> Path:
    """A tiny BERT with a WordPiece vocabulary of the test corpus (untrained weights)."""
    return tiny("bert", corpus=corpus_dir, max_positions=48, save_to=tmp_path_factory.mktemp("models") / "bert")


def animal_csv(path: Path, n: int = 64) -> Path:
    rng = random.Random(1)
    rows = ["text,label"]
    for _ in range(n):
        animal = rng.random() < 0.5
        rows.append(f"the {rng.choice(ANIMALS if animal else THINGS)} {rng.choice(VERBS)} the {rng.choice(THINGS)} "
                    f".,{'yes' if animal else 'no'}")
    path.write_text("\n".join(rows) + "\n")
    return path


def animal_squad(path: Path, articles: int = 6, per_article: int = 6) -> Path:
    """Which animal is in the passage? One animal among things, in passages long enough to be windowed."""
    data = animal_articles(articles, per_article, seed=2)
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


COMMON = ["--epochs", 3, "--batch-size", 8, "--lr", 3e-3, "--max-length", 32, "--device", "cpu"]


def finetune_args(kind: str, bert: Path, folder: Path) -> list:
    """Each job checkpoints often, in its own way: every 2 steps (ULMFiT's gradual unfreezing, two evaluations
    an epoch), by time alone (every 0.1 s), every 3 steps (SQuAD windows)."""
    if kind == "classification":
        return ["--task", f"csv:{animal_csv(folder / 'animals.csv')}", "--strategy", "ulmfit", "--evals-per-epoch", 2,
                "--save-every", 2, *COMMON]
    if kind == "tagging":
        return ["--task", "conll2003", "--save-every", 1000, "--save-every-minutes", 0.1 / 60, *COMMON]
    return ["--task", "squad", "--train-file", animal_squad(folder / "squad.json"), "--holdout-articles", 2,
            "--doc-stride", 8, "--strategy", "discriminative", "--save-every", 3, *COMMON]


def final_state(out: Path) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """The fine-tuned weights (backbone and head), every record of metrics.jsonl, and the final figures (the run's
    duration aside)."""
    weights = {f"{name}:{key}": value for name in ("model.safetensors", "head.safetensors")
               for key, value in load_file(out / "model" / name).items()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    metrics.pop("minutes")
    return weights, records, metrics


def assert_same_run(out: Path, expected: tuple, what: str) -> None:
    weights, records, metrics = final_state(out)
    assert records == expected[1], what
    assert metrics == expected[2], what
    assert weights.keys() == expected[0].keys(), what
    for name, value in weights.items():
        assert torch.equal(value, expected[0][name]), f"{what}: {name} differs"


def kill_moment(trial: int, rng: random.Random, reference: dict, started: Path,
                window: float) -> tuple[Path | None, float]:
    """(file to wait for, seconds after it): trial 0 anywhere from the start to the end, the others within
    `window` seconds after `started` appears, while the job trains or writes (timed from there: start-up times
    vary more than these jobs last)."""
    if trial == 0:
        return None, rng.uniform(0, reference["seconds"])
    return started, rng.uniform(0, window)


# -------------------------------------------------------------------------------------------------- fine-tuning
@pytest.mark.parametrize("kind", ["classification", "tagging", "squad"])
def test_finetune_killed_at_random_moments_resumes_exactly(runner, bert, tmp_path, kind):
    args = ["finetune", "--model", bert, *finetune_args(kind, bert, tmp_path)]
    reference = runner.finish(*args, "--out", tmp_path / "reference", log=tmp_path / "reference.log")
    assert (tmp_path / "reference" / "train_config.json").is_file()
    expected = final_state(tmp_path / "reference")
    # training: from train_config.json (written as it starts) to the last record of metrics.jsonl (its last step's
    # evaluation); after it come the test split, loss.png and model/
    training = ((tmp_path / "reference" / "metrics.jsonl").stat().st_mtime
                - (tmp_path / "reference" / "train_config.json").stat().st_mtime)
    rng = random.Random(f"kill {kind}")
    outcomes = []
    for trial in range(KILLS):
        out, log = tmp_path / f"trial{trial}", tmp_path / f"trial{trial}.log"
        wait_for, after = kill_moment(trial, rng, reference, out / "train_config.json", training)
        killed = runner.run(*args, "--out", out, log=log, wait_for=wait_for, after=after)
        resumable = is_resumable(out / "checkpoint")
        if resumable:
            step = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
            load_checkpoint(out / "checkpoint")  # the newest checkpoint always loads
        outcomes.append((round(after, 2), killed["killed"], step if resumable else None))
        runner.finish(*args, "--out", out, *(["--resume"] if resumable else []), log=log)
        assert_same_run(out, expected, f"{kind}, trial {trial}: killed after {after:.2f} s, checkpoint "
                                       f"{outcomes[-1][2]}")
    print(f"{kind}: (seconds, killed, checkpoint step) per trial: {outcomes}")


# ------------------------------------------------------------------------------------- outputs written as they go
@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, corpus_dir) -> Path:
    """A tiny GPT-2 (untrained) with room for a short passage, a question and an answer."""
    return tiny("gpt2", corpus=corpus_dir, max_positions=96, save_to=tmp_path_factory.mktemp("models") / "gpt2")


def assert_kills_resume_to_the_same_file(runner, tmp_path, name: str, args: list, output: str) -> None:
    """`ctxlm ARGS --OUTPUT FILE`, killed at random moments, then run again with --resume, writes the file an
    uninterrupted run writes; so does --resume after a kill that cut its last line in half."""
    reference = runner.finish(*args, f"--{output}", tmp_path / "reference.jsonl", log=tmp_path / "reference.log")
    expected = (tmp_path / "reference.jsonl").read_bytes()
    rng = random.Random(f"kill {name}")
    written = []
    for trial in range(KILLS):
        out, log = tmp_path / f"trial{trial}.jsonl", tmp_path / f"trial{trial}.log"
        wait_for, after = kill_moment(trial, rng, reference, out, reference["seconds"] - reference["ready"])
        runner.run(*args, f"--{output}", out, log=log, wait_for=wait_for, after=after)
        written.append(len(out.read_bytes().splitlines()) if out.exists() else None)
        runner.finish(*args, f"--{output}", out, "--resume", log=log)
        assert out.read_bytes() == expected, f"{name}, trial {trial}: killed after {after:.2f} s ({written[-1]} lines)"
    cut = tmp_path / "cut.jsonl"  # a kill in the middle of a line: its first half stays
    cut.write_bytes(expected[:len(expected) // 2])
    runner.finish(*args, f"--{output}", cut, "--resume", log=tmp_path / "cut.log")
    assert cut.read_bytes() == expected
    print(f"{name}: lines written at each kill (None: no file yet): {written}")


def test_zeroshot_killed_mid_output_resumes_to_the_same_file(runner, gpt2, tmp_path):
    rng = random.Random(3)
    data = []
    for a in range(12):  # passages of 1 to 3 sentences: prompts of different lengths
        context = " ".join(f"the {rng.choice(ANIMALS)} {rng.choice(VERBS)} the {rng.choice(THINGS)} ."
                           for _ in range(rng.randint(1, 3)))
        qas = [{"id": f"{a}-{q}", "question": f"what does the {rng.choice(ANIMALS)} see ?",
                "answers": [{"text": "the", "answer_start": 0}]} for q in range(8)]
        data.append({"title": f"a{a}", "paragraphs": [{"context": context, "qas": qas}]})
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": data}))
    args = ["zeroshot", "--model", gpt2, "--task", "coqa-style", "--data", squad, "--limit", 0,
            "--max-answer-tokens", 3, "--batch-size", 2, "--device", "cpu"]  # 96 questions, chunks of 32
    assert_kills_resume_to_the_same_file(runner, tmp_path, "zeroshot", args, "out")


def test_embed_killed_mid_output_resumes_to_the_same_file(runner, bert, tmp_path, corpus_dir):
    texts = (corpus_dir / "train.txt").read_text().splitlines()[:300]
    (tmp_path / "in.txt").write_text("\n".join(f"{t} {t}" if i % 3 else t for i, t in enumerate(texts)) + "\n")
    args = ["embed", bert, "--input", tmp_path / "in.txt", "--batch-size", 2, "--device", "cpu"]  # chunks of 32
    assert_kills_resume_to_the_same_file(runner, tmp_path, "embed", args, "output")


# ------------------------------------------------------------------------------------------- in this process
def test_time_checkpoints_fall_by_the_clock_and_never_change_the_run(tmp_path, monkeypatch):
    """A clock that moves 1 s per look: checkpoints every 3 s fall between the step periods, and a run killed
    after one of them resumes from it to the weights of a run that saved by steps alone."""
    from ctxlm import train
    from ctxlm.pretrain.causal_lm import causal_lm_objective

    def run(run_dir: Path, minutes: float | None, stop_at: int | None = None, resume: bool = False):
        batches = synthetic_batches()

        def batch(i):
            if i == stop_at:
                raise Interrupt
            return batches.batch(i)

        config = train.TrainConfig(steps=12, lr=1e-2, warmup_steps=3, save_every=100, eval_every=100, log_every=1,
                                   save_every_minutes=minutes)
        trainer = train.Trainer(tiny("gpt2", vocab_size=50, n_heads=4), causal_lm_objective, batch, config, run_dir)
        saved = []
        monkeypatch.setattr(trainer, "save_state", lambda: (saved.append(trainer.step),
                                                            train.Trainer.save_state(trainer)))
        with contextlib.suppress(Interrupt):  # as if killed
            trainer.fit(resume=resume)
        return trainer, saved

    clock = iter(range(10**6))
    monkeypatch.setattr(train.time, "perf_counter", lambda: float(next(clock)))
    reference, saved = run(tmp_path / "a", None)
    assert saved == [12]  # by steps alone: only the last
    _, saved = run(tmp_path / "b", 3 / 60, stop_at=9)
    assert len(saved) >= 3 and saved[-1] <= 9  # by the clock alone (the step period is 100), then killed
    resumed, _ = run(tmp_path / "b", 3 / 60, resume=True)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [r for r in reference.history if "loss" in r] == [
        r for r in (json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r]


@pytest.mark.parametrize("args, fragment", [
    (["finetune", "--model", "m", "--task", "sst2", "--out", "o", "--save-every", 0],
     "--save-every 0: expected a positive number of steps between checkpoints"),
    (["finetune", "--model", "m", "--task", "sst2", "--out", "o", "--save-every-minutes", -1],
     "--save-every-minutes -1: expected a positive number of minutes between checkpoints"),
    (["pretrain", "--out", "o", "--save-every", 0], "--save-every 0: expected a positive number of steps"),
    (["pretrain", "--out", "o", "--save-every-minutes", 0], "--save-every-minutes 0: expected a positive number"),
    (["compare", "--model", "m", "--task", "sst2", "--out", "o", "--save-every", -3], "--save-every -3"),
    (["finetune", "--model", "m", "--task", "sst2", "--out", "o", "--resume"],
     "no checkpoint to resume from (the run stopped before its first checkpoint?)"),
    (["embed", "--input", "in.txt", "--output", "o.npy", "--resume"], "--resume continues a .jsonl --output"),
    (["zeroshot", "--model", "m", "--resume"], "--resume continues the answers file"),
])
def test_checkpoint_and_resume_options_fail_in_one_line(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("a text\n")
    assert_user_error(run_cli(monkeypatch, capsys, *args), fragment)


def test_compare_resumes_inside_an_interrupted_run(bert, tmp_path):
    """Seed 0 was stopped by --max-minutes (its metrics.json says unfinished), seed 1 killed (a checkpoint and
    nothing else): compare resumes both from their checkpoints, to the weights of an uninterrupted run."""
    from ctxlm.transfer.compare import compare
    from ctxlm.transfer.config import FinetuneConfig
    from ctxlm.transfer.finetune import finetune

    base = FinetuneConfig(model=str(bert), task=f"csv:{animal_csv(tmp_path / 'animals.csv')}", epochs=1,
                          batch_size=16, lr=3e-3, max_length=32, device="cpu")
    finetune(base, tmp_path / "alone")
    runs = [tmp_path / "cmp" / "bert" / "full" / f"seed{seed}" for seed in (0, 1)]
    for seed, run_dir in enumerate(runs):
        stopped = finetune(replace(base, seed=seed, max_minutes=0.0), run_dir)  # one step, then its checkpoint
        assert not stopped["finished"] and is_resumable(run_dir / "checkpoint")
    (runs[1] / "metrics.json").unlink()  # as if killed after its checkpoint
    said = []
    compare(base, [str(bert)], ["full"], [0, 1], tmp_path / "cmp", say=said.append)
    assert [line for line in said if line.startswith("==")] == [
        f"== {bert} · full · seed {seed} (resuming from its checkpoint)" for seed in (0, 1)]
    assert not any((run_dir / "checkpoint").exists() for run_dir in runs)
    a, b = (load_file(folder / "model" / "model.safetensors") for folder in (tmp_path / "alone", runs[0]))
    assert all(torch.equal(a[name], b[name]) for name in a)
