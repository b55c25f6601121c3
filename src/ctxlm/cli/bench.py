"""`ctxlm bench`: ctxlm against transformers, sentence-transformers and ONNX Runtime in one table.

The measuring code lives in the source checkout's benchmarks/ folder, beside the other side-by-side scripts,
because it needs the peers (transformers, sentence-transformers; onnxruntime from the `bench` extra), which ctxlm
itself never imports. So the command runs from a clone (`pip install -e '.[test,bench]'`), and says so when
installed from a wheel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ctxlm.errors import UserError

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"  # src/ctxlm/cli/bench.py → the checkout's root


def benchmarks_dir() -> Path:
    if not (BENCHMARKS / "bench.py").is_file():
        raise UserError(f"{BENCHMARKS}: no benchmarks/bench.py; `ctxlm bench` runs from a source checkout of ctxlm "
                        "(git clone, then pip install -e '.[test]'), not from an installed wheel")
    return BENCHMARKS


@click.command(epilog="""\b
Sections (--only): pretrain, generate, embed (ctxlm's default precision against sentence-transformers and, with
the bench extra, ONNX Runtime fp32 and int8, with each one's lowest cosine to fp32), finetune, memory, precision
(bf16 autocast against fp32 pretraining: tokens/s, loss after the same steps) [the default: all six], and scaling
(its own tables: GPT-2 step time and memory against sequence length and width).
Examples:
  # the whole table, then the same as JSON for comparing over time
  ctxlm bench --json runs/bench.json
  # a smoke run: fewer rounds and steps, small text sets (a minute or two on 2 CPU cores)
  ctxlm bench --quick
  # only training throughput and memory, on the GPU, against the datasheet's peak (H100 SXM: 67 TFLOP/s fp32)
  ctxlm bench --only pretrain,memory --device cuda --peak-gflops 67000
  # the scaling tables (sequence length 128-2048, width 128-768)
  ctxlm bench --only scaling
""")
@click.option("--only", "sections", default="pretrain,generate,embed,finetune,memory,precision", show_default=True,
              help="comma-separated sections to run (scaling runs only when named)")
@click.option("--quick", is_flag=True, help="1 round of 1 step, fewer tokens and texts: a smoke run, not a "
              "measurement [default: medians of 5 alternating rounds of 5 steps]")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... (auto: cuda if any)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the results to this file")
@click.option("--peak-gflops", type=float, help="the machine's peak fp32 GFLOP/s for the '% of peak' column "
              "[default: measured here, the best of 5 large fp32 matrix products]")
def bench(sections, quick, device, json_path, peak_gflops) -> None:
    """Measure ctxlm against transformers, sentence-transformers and ONNX Runtime: pretraining, generation,
    embedding and fine-tuning rates, peak training memory, bf16 against fp32, with ratios and the share of the
    machine's peak FLOP/s."""
    folder = benchmarks_dir()
    if peak_gflops is not None and peak_gflops <= 0:
        raise UserError(f"--peak-gflops must be positive, got {peak_gflops}")
    sys.path.insert(0, str(folder))  # the scripts import each other (common, flops, ...) as top-level modules
    import bench as suite

    suite.run(suite.Settings(sections=suite.parse_sections(sections), device=device, quick=quick,
                             peak_gflops=peak_gflops), json_path)


COMMANDS = [bench]
