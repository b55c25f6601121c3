"""`ctxlm bench`: ctxlm against the library a user would otherwise pick, in one table (see `ctxlm bench --help`).

Each row is one measure, timed for ctxlm and its peer side by side in this process: the same weights, the same
batch, rounds alternating between the two so that drift in the machine's speed hits both alike, medians over
rounds (common.median_rates). Sections:

- pretrain: training tokens/s (forward + backward + fused AdamW) of GPT-2 against transformers'
  GPT2LMHeadModel and BERT (masked LM + NSP) against BertForPreTraining, each at a tiny and a small size; ELMo
  and Transformer-XL have no maintained peer (transformers 5 removed TransfoXL and never had ELMo), so their rows
  give ctxlm's rate alone. ctxlm's achieved GFLOP/s and its share of the machine's peak come with them
  (benchmarks/flops.py for the count).
- generate: greedy decoding with a KV cache, batch 1 and 8, ctxlm.generate_ids against transformers' generate().
- embed: sentence vectors from the packaged MiniLM, ctxlm.embed in its default precision (auto: bf16 autocast
  where the CPU or GPU has bf16 units, else fp32) against sentence-transformers' encode and, with the `bench`
  extra, ONNX Runtime fp32 and dynamic int8 (benchmarks/onnx_embed.py), on SST-2 dev sentences and on long texts;
  every contender's lowest cosine to ctxlm's fp32 vectors beside its rate. Without onnxruntime its rows say why.
- precision: GPT-2 and BERT pretraining under bf16 autocast against fp32 (`--precision bf16` / `fp32`): tokens/s
  and the loss after the same steps from the same start.
- finetune: a sentence classifier's training step on MiniLM, ctxlm's TaskModel against
  BertForSequenceClassification.
- memory: what a training step adds at its peak on top of the weights, each contender in a fresh process
  (benchmarks/peak_memory.py says how).
- scaling: ctxlm GPT-2's step time and memory against sequence length and width (benchmarks/scaling.py); its
  own table, not run unless asked for.
"""

from __future__ import annotations

import importlib.util
import json
import random
import string
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from common import Shape, machine_info, machine_line, measured_peak_gflops, median_rates, resolve_device, train_rate

import ctxlm
from ctxlm.errors import UserError

SECTIONS = ("pretrain", "generate", "embed", "finetune", "memory", "precision", "scaling")
DEFAULT_SECTIONS = SECTIONS[:-1]
SIZES = {"tiny": Shape(layers=2, dim=128, heads=2, vocab=8192, block=128, batch=8),
         "small": Shape(layers=4, dim=256, heads=4, vocab=8192, block=256, batch=8)}
EMBED_BATCH = 32
FINETUNE_BATCH = 32


@dataclass
class Settings:
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    device: str = "auto"
    quick: bool = False
    peak_gflops: float | None = None  # None: measured here
    sizes: dict[str, Shape] = field(default_factory=lambda: dict(SIZES))  # tests pass smaller ones

    @property
    def rounds(self) -> int:
        return 1 if self.quick else 5

    @property
    def steps(self) -> int:
        """Timed training steps per round, after one untimed warm-up step."""
        return 1 if self.quick else 5


@dataclass
class Row:
    section: str
    measure: str
    unit: str
    ctxlm: float
    peer: float | None = None
    peer_name: str | None = None
    flops_per_unit: float | None = None  # model FLOPs per token / example, where the formula applies
    ctxlm_cosine: float | None = None  # embeddings: the lowest cosine of each side's vectors to ctxlm's fp32 ones
    peer_cosine: float | None = None
    extra: dict[str, float] | None = None  # other figures of the row (the precision rows' losses)

    @property
    def ratio(self) -> float | None:
        return None if self.peer is None else self.ctxlm / self.peer

    @property
    def gflops(self) -> float | None:
        return None if self.flops_per_unit is None else self.ctxlm * self.flops_per_unit / 1e9


def check_requirements(sections: tuple[str, ...]) -> None:
    """Say what is missing before anything runs: every section compares with transformers (scaling builds its
    GPT-2 from transformers' config), embed with sentence-transformers too; three sections read SST-2."""
    needed = ["transformers", *(["sentence_transformers"] if "embed" in sections else [])]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"ctxlm bench compares against {' and '.join(missing)}, not installed here: "
                        "pip install -e '.[test]'")
    readers = [name for name in ("embed", "finetune", "memory") if name in sections]
    if readers:
        from ctxlm.paths import dataset_path

        try:
            dataset_path("sst2", "dev.tsv")
        except UserError as err:
            raise UserError(f"the {', '.join(readers)} section(s) read SST-2 sentences: {err}") from None


def checked_device(name: str) -> torch.device:
    try:
        device = resolve_device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda, cuda:1, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here")
    return device


def parse_sections(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise UserError(f"--only {text!r}: expected a comma-separated choice of {','.join(SECTIONS)}")
    return names


# -- pretraining -------------------------------------------------------------------------------------------------

def pretrain_rows(settings: Settings, device: torch.device) -> list[Row]:
    import bert_vs_transformers as bert
    import gpt2_vs_transformers as gpt2
    from flops import bert_train_flops, gpt_train_flops, xl_train_flops

    rows = []
    for size, s in settings.sizes.items():
        ref, ours = gpt2.build(s, device=device)
        rates = median_rates(gpt2.training_rates(ref, ours, s, settings.steps), settings.rounds)
        rows.append(Row("pretrain", f"GPT-2 pretraining, {size} {s.label}", "tokens/s", rates["ctxlm"],
                        rates["transformers"], "transformers GPT2LMHeadModel",
                        gpt_train_flops(s.layers, s.dim, s.block, s.vocab)))
        ref, ours = bert.build(s, device=device)
        rates = median_rates(bert.training_rates(ref, ours, s, settings.steps), settings.rounds)
        rows.append(Row("pretrain", f"BERT pretraining (MLM + NSP), {size} {s.label}", "tokens/s", rates["ctxlm"],
                        rates["transformers"], "transformers BertForPreTraining",
                        bert_train_flops(s.layers, s.dim, s.block, s.vocab, bert.MASKED)))
        rate = median_rates({"ctxlm": elmo_training_rate(s, settings.steps, device)}, settings.rounds)["ctxlm"]
        rows.append(Row("pretrain", f"ELMo biLM pretraining, {size} 2 LSTM layers × {s.dim // 2} (cells "
                        f"{2 * s.dim}) each way, T={s.block}, batch {s.batch}", "tokens/s", rate))
        rate = median_rates({"ctxlm": xl_training_rate(s, settings.steps, device)}, settings.rounds)["ctxlm"]
        rows.append(Row("pretrain", f"Transformer-XL pretraining, {size} {s.label}, memory {s.block}", "tokens/s",
                        rate, flops_per_unit=xl_train_flops(s.layers, s.dim, s.block, s.block, s.vocab)))
    return rows


def elmo_training_rate(s: Shape, steps: int, device: torch.device) -> Callable[[], float]:
    """ctxlm's ELMo as `ctxlm pretrain --model elmo --dim D` builds it (no clipping, a full softmax over `s.vocab`
    words), at D = half the transformers' width: its 2 × 2 LSTMs (cells 4 D) then hold about as many weights
    as the transformer's blocks at that size. Words are drawn by Zipf's law from made-up words of 2-10 letters,
    so that a batch repeats its frequent words as text does (the character CNN runs once per distinct word)."""
    from ctxlm.config import preset
    from ctxlm.models import build_model
    from ctxlm.tokenizers.characters import SPECIALS, CharTokenizer

    rng = random.Random(0)
    words = dict.fromkeys(SPECIALS)
    while len(words) < s.vocab:
        words["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10)))] = None
    tokenizer = CharTokenizer(list(words))
    torch.manual_seed(0)
    model = build_model(preset("elmo", vocab_size=s.vocab, dim=s.dim // 2, layers=2, dropout=0.1)).to(device)
    model.tokenizer = tokenizer
    zipf = 1.0 / torch.arange(1, s.vocab - len(SPECIALS) + 1, dtype=torch.float)
    ids = (torch.multinomial(zipf, s.batch * s.block, replacement=True) + len(SPECIALS)).view(s.batch, s.block)
    ids = ids.to(device)
    targets = tokenizer.softmax_targets(ids)
    return lambda: train_rate(model, lambda: model(ids, targets=targets).loss, ids.numel(), steps)


def xl_training_rate(s: Shape, steps: int, device: torch.device) -> Callable[[], float]:
    """ctxlm's Transformer-XL as `ctxlm pretrain --model transformer-xl` builds it with a full softmax, memory
    as long as the segment and carried from step to step, as in its pretraining."""
    from ctxlm.config import preset
    from ctxlm.models import build_model

    config = preset("transformer-xl", vocab_size=s.vocab, dim=s.dim, layers=s.layers, heads=s.heads, mem_len=s.block,
                    dropout=0.1)
    torch.manual_seed(0)
    model = build_model(config).to(device)
    x = torch.randint(0, s.vocab, (s.batch, s.block), device=device)
    y = torch.roll(x, -1, dims=1)
    memory: list = [None]

    def loss() -> torch.Tensor:
        out = model(x, memory=memory[0], targets=y)
        memory[0] = out.hidden.memory  # detached by the model
        return out.loss

    return lambda: train_rate(model, loss, x.numel(), steps)


# -- generation, embeddings, fine-tuning -------------------------------------------------------------------------

def generate_rows(settings: Settings, device: torch.device) -> list[Row]:
    import gpt2_vs_transformers as gpt2

    size, s = list(settings.sizes.items())[-1]
    ref, ours = gpt2.build(s, device=device)
    new_tokens = 16 if settings.quick else 64
    rows = []
    for batch_size in (1, 8):
        rates = median_rates(gpt2.generation_rates(ref, ours, batch_size=batch_size, new_tokens=new_tokens),
                             settings.rounds)
        rows.append(Row("generate", f"GPT-2 greedy generation, {size} {s.layers}×{s.dim}, batch {batch_size}, "
                        f"8-token prompts + {new_tokens} new, KV cache", "new tokens/s", rates["ctxlm"],
                        rates["transformers"], "transformers generate()"))
    return rows


EMBED_PEERS = {"sentence-transformers": "sentence-transformers encode, fp32",
               "ONNX Runtime fp32": "ONNX Runtime fp32 (optimised graph)",
               "ONNX Runtime int8": "ONNX Runtime dynamic int8"}


def embed_rows(settings: Settings, device: torch.device) -> list[Row]:
    """ctxlm.embed (its default precision) against each peer on two text sets; alternating rounds of all the
    contenders, medians; each side's lowest cosine to ctxlm's fp32 vectors."""
    import embed_vs_sentence_transformers as embed
    import onnx_embed

    from ctxlm.precision import choose
    from ctxlm.transfer.data import load_task

    model, reference = embed.load_models(device)
    encode = embed.encoders(model, reference, EMBED_BATCH)
    contenders = {name: encode[name] for name in ("ctxlm", "sentence-transformers")}
    why = onnx_embed.missing() if device.type == "cpu" else "ONNX Runtime is measured on the CPU only"
    if why is None:
        contenders |= onnx_embed.encoders(model, EMBED_BATCH)
    choice = choose("auto", device)
    text_sets = {"SST-2 dev": [e.texts[0] for e in load_task("sst2").dev][:64 if settings.quick else None],
                 "long texts": embed.long_texts(16 if settings.quick else 200, 225)}
    rows = []
    for set_name, texts in text_sets.items():
        exact = encode["ctxlm fp32"](texts)  # also the first call of each: a warm-up
        cosine = {name: float((fn(texts).float() * exact).sum(-1).min()) for name, fn in contenders.items()}
        rates = median_rates({name: embed.rate(fn, texts, device) for name, fn in contenders.items()},
                             settings.rounds)
        cut = ", cut at 256 tokens" if set_name == "long texts" else ""
        label = (f"MiniLM sentence embedding, {set_name} ({len(texts)} texts{cut}), batch {EMBED_BATCH}, mean "
                 f"pooling + normalisation; ctxlm default: {choice.name}")
        for peer, peer_label in EMBED_PEERS.items():
            if peer in rates:
                rows.append(Row("embed", label, "sentences/s", rates["ctxlm"], rates[peer], peer_label,
                                ctxlm_cosine=cosine["ctxlm"], peer_cosine=cosine[peer]))
            else:
                rows.append(Row("embed", label, "sentences/s", rates["ctxlm"], None, f"{peer_label}: skipped, {why}",
                                ctxlm_cosine=cosine["ctxlm"]))
    return rows


def finetune_rows(settings: Settings, device: torch.device) -> list[Row]:
    import finetune_vs_transformers as finetune
    from flops import body_train_flops

    ours, ref = finetune.build_ctxlm(device), finetune.build_hf(device)
    batch = finetune.task_batch(FINETUNE_BATCH, device)
    rates = median_rates(finetune.training_rates(ours, ref, batch, settings.steps), settings.rounds)
    config, (size, length) = ours.lm.config, batch["ids"].shape
    # every token of the padded batch is computed; the classifier on top is negligible
    per_token = body_train_flops(config.n_layers, config.dim, config.mlp_dim, length)
    return [Row("finetune", f"MiniLM fine-tuning, SST-2 sentence classification, batch {size} (padded to {length} "
                "tokens)", "examples/s", rates["ctxlm"], rates["transformers"],
                "transformers BertForSequenceClassification", per_token * length)]


# -- memory ------------------------------------------------------------------------------------------------------

def memory_rows(settings: Settings, device: torch.device) -> list[Row]:
    import peak_memory

    peak_memory.check_supported(device)
    size, s = list(settings.sizes.items())[-1]
    finetune_shape = Shape(layers=6, dim=384, heads=12, vocab=30522, block=128, batch=FINETUNE_BATCH)  # MiniLM's
    measures = [("gpt2", s, f"GPT-2 pretraining step, {size} {s.label}", "transformers GPT2LMHeadModel"),
                ("bert", s, f"BERT pretraining step, {size} {s.label}", "transformers BertForPreTraining"),
                ("finetune", finetune_shape, f"MiniLM fine-tuning step, SST-2, batch {FINETUNE_BATCH}",
                 "transformers BertForSequenceClassification")]
    rows = []
    for measure, shape, label, peer_name in measures:
        mib = {contender: peak_memory.in_fresh_process(measure, contender, shape, device)["bytes"] / 2**20
               for contender in peak_memory.CONTENDERS}
        rows.append(Row("memory", f"{label}: peak memory above the weights", "MiB", mib["ctxlm"],
                        mib["transformers"], peer_name))
    return rows


# -- precision ---------------------------------------------------------------------------------------------------

def precision_rows(settings: Settings, device: torch.device) -> list[Row]:
    """GPT-2 and BERT pretraining steps under bf16 autocast against fp32, at the first (smallest) size: tokens/s
    in alternating rounds, and the loss after the same steps (10, or 2 with --quick) from the same weights, batch
    and dropout masks. The bf16 rate is the `ctxlm` column, fp32 the `peer` one."""
    import bert_vs_transformers as bert
    import gpt2_vs_transformers as gpt2

    size, s = next(iter(settings.sizes.items()))
    steps_for_loss = 2 if settings.quick else 10
    gx, gy = gpt2.batch(s, device)
    bb = bert.pretraining_batch(s, device)
    families = {"GPT-2": (lambda: gpt2.build_ctxlm(s).to(device), lambda m: gpt2.ctxlm_loss(m, gx, gy)),
                "BERT (MLM + NSP)": (lambda: bert.build_ctxlm(s).to(device), lambda m: bert.ctxlm_loss(m, bb))}
    rows = []
    for family, (build, loss_of) in families.items():
        rates = median_rates({precision: _rate(build(), loss_of, precision, s.batch * s.block, settings.steps)
                              for precision in ("fp32", "bf16")}, settings.rounds)
        losses = {precision: _loss_after(build, loss_of, precision, steps_for_loss) for precision in ("fp32", "bf16")}
        rows.append(Row("precision", f"{family} pretraining, bf16 autocast (ctxlm) vs fp32 (peer), {size} {s.label}; "
                        f"loss after {steps_for_loss} steps fp32 {losses['fp32']:.4f} / bf16 {losses['bf16']:.4f}",
                        "tokens/s", rates["bf16"], rates["fp32"], "ctxlm fp32",
                        extra={"loss_fp32": losses["fp32"], "loss_bf16": losses["bf16"], "loss_steps": steps_for_loss}))
    return rows


def _rate(model, loss_of, precision: str, tokens: int, steps: int) -> Callable[[], float]:
    return lambda: train_rate(model, _autocast_loss(model, loss_of, precision), tokens, steps)


def _autocast_loss(model, loss_of, precision: str) -> Callable[[], torch.Tensor]:
    device = next(model.parameters()).device

    def loss() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return loss_of(model)

    return loss


def _loss_after(build, loss_of, precision: str, steps: int) -> float:
    """The training loss at step `steps` of a fresh model (seeded, so the same start and dropout masks for both
    precisions), fused AdamW at 1e-3."""
    model = build().train()
    torch.manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    step_loss = _autocast_loss(model, loss_of, precision)
    for _ in range(steps):
        loss = step_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


ROWS: dict[str, Callable[[Settings, torch.device], list[Row]]] = {
    "pretrain": pretrain_rows, "generate": generate_rows, "embed": embed_rows, "finetune": finetune_rows,
    "memory": memory_rows, "precision": precision_rows}


# -- the report --------------------------------------------------------------------------------------------------

def run(settings: Settings, json_path: str | Path | None = None) -> dict:
    """Measure the chosen sections, print the table(s) and return (and write, given a path) the results."""
    check_requirements(settings.sections)
    device = checked_device(settings.device)
    info = machine_info()
    if settings.peak_gflops is not None:
        peak, peak_source = settings.peak_gflops, "given (--peak-gflops)"
    else:
        peak = measured_peak_gflops(device)
        peak_source = "measured here: the best of 5 fp32 square matrix products (a practical peak)"
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ctxlm": ctxlm.__version__, "commit": _commit(),
              "machine": info, "device": str(device), "quick": settings.quick, "rounds": settings.rounds,
              "steps_per_round": settings.steps, "peak_gflops": peak, "peak_source": peak_source, "rows": []}
    print(machine_line(info) + f"; device {device}")
    quiet_peers()
    rows: list[Row] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*longer than max_length")
        for section in settings.sections:
            if section in ROWS:
                rows += ROWS[section](settings, device)
    report["rows"] = [row_json(row, peak) for row in rows]
    if rows:
        print_rows(rows, peak, peak_source, settings)
    if "scaling" in settings.sections:
        import scaling

        report["scaling"] = scaling.run(scaling.quick_settings() if settings.quick else scaling.ScalingSettings(),
                                        device, peak)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def quiet_peers() -> None:
    """transformers' notes on the random models built here (unused token ids, newly initialised heads) and its
    loading bars would bury the table."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def row_json(row: Row, peak: float) -> dict:
    gflops = row.gflops
    return asdict(row) | {"ratio": row.ratio, "gflops": gflops, "peak_fraction": None if gflops is None else
                          gflops / peak}


def _commit() -> str | None:
    """The checkout's commit (-dirty: with changes), so that results compared over time say what they measured."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                              capture_output=True, text=True)
    except OSError:  # no git
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def print_rows(rows: list[Row], peak: float, peak_source: str, settings: Settings) -> None:
    print("\n| measure | unit | ctxlm | peer | ratio | peer is | ctxlm GFLOP/s (% of peak) | min cosine to fp32, "
          "ctxlm / peer |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for row in rows:
        gflops = row.gflops
        achieved = "–" if gflops is None else f"{gflops:,.1f} ({100 * gflops / peak:.0f} %)"
        ratio = "–" if row.ratio is None else f"{row.ratio:.2f}x"
        cosines = " / ".join("–" if c is None else f"{c:.5f}" for c in (row.ctxlm_cosine, row.peer_cosine))
        print(f"| {row.measure} | {row.unit} | {_number(row.ctxlm)} | {_number(row.peer)} | {ratio} "
              f"| {row.peer_name or '–'} | {achieved} | {cosines if row.ctxlm_cosine is not None else '–'} |")
    print(f"\nratio = ctxlm / peer: above 1, ctxlm is faster (rates) or uses more memory (MiB). Rates are medians of "
          f"{settings.rounds} alternating rounds ({settings.steps} timed training step(s) per round after a warm-up"
          f" step){'; --quick: a smoke run, not a measurement' if settings.quick else ''}.")
    print(f"GFLOP/s: model FLOPs by formula (6 × weights of the matrix products + 12 × layers × keys × width per "
          f"trained token, benchmarks/flops.py) at ctxlm's rate; peak {peak:,.0f} GFLOP/s, {peak_source}. ELMo: "
          "not estimated (recurrent).")
    if any(row.section == "memory" for row in rows):
        from peak_memory import STEPS

        print(f"Memory: each contender in a fresh process; what {STEPS} training steps add at their peak to "
              "the memory held once model, batch and optimizer are built (CPU: Linux peak RSS, reset before the "
              "steps; GPU: torch.cuda.max_memory_allocated).")
