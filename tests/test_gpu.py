"""The GPU path: the same models, training and generation on CUDA as on the CPU.

They skip on machines without a CUDA GPU (CI has none); `pytest tests/test_gpu.py` runs them where there is one.
"""

import pytest
import torch

from ctxlm.config import BertConfig, GPTConfig
from ctxlm.generate import generate_ids
from ctxlm.models import build_model
from helpers import metrics_records, run_cli
from tolerances import assert_fp_close

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA GPU visible to torch here (torch.cuda.is_available() is False)"),
              pytest.mark.numeric]

CONFIGS = [GPTConfig(model_type="gpt2", vocab_size=97, max_positions=64, dim=64, n_layers=2, n_heads=4, dropout=0.0,
                     attn_dropout=0.0),
           BertConfig(vocab_size=97, max_positions=64, dim=64, n_layers=2, n_heads=4, dropout=0.0, attn_dropout=0.0)]
# Float32 on both devices, summed in other orders (tests/tolerances.py): sums of up to 256 terms (the MLP's second
# product; 3 x 40 positions into a weight's gradient), through the embeddings, 2 blocks and a LayerNorm, then as many
# stages back for the gradients, or a head and a loss for the loss.
FORWARD, BACKWARD, LOSS = dict(terms=256, depth=4), dict(terms=256, depth=8), dict(terms=256, depth=6)


@pytest.fixture(autouse=True)
def exact_fp32_matmul():
    """TF32 products (on by default for convolutions, opt-in for matmul) would differ from the CPU by ~1e-3."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("config", CONFIGS, ids=["gpt2", "bert"])
def test_forward_and_gradients_match_the_cpu(config):
    torch.manual_seed(0)
    cpu = build_model(config).train()
    gpu = build_model(config).train()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    ids = torch.randint(0, config.vocab_size, (3, 40))
    for model, x in ((cpu, ids), (gpu, ids.cuda())):
        model.backbone(x).last.square().mean().backward()
    assert_fp_close(gpu.backbone(ids.cuda()).last, cpu.backbone(ids).last, **FORWARD)
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        assert_fp_close(q.grad, p.grad, **BACKWARD, msg=name)


def test_lm_loss_and_greedy_generation_match_the_cpu():
    torch.manual_seed(0)
    cpu = build_model(CONFIGS[0]).eval()
    gpu = build_model(CONFIGS[0]).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    ids = torch.randint(0, 97, (2, 32))
    targets = torch.roll(ids, -1, dims=1)
    assert_fp_close(gpu(ids.cuda(), targets=targets.cuda()).loss, cpu(ids, targets=targets).loss, **LOSS)
    prompts = [[5, 6, 7], [8, 9]]
    assert generate_ids(gpu, prompts, max_new_tokens=12).tokens == generate_ids(cpu, prompts, max_new_tokens=12).tokens


def test_pretrain_cli_trains_on_the_gpu(monkeypatch, capsys, corpus_dir, tiny_model_dir, tmp_path):
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        code, _, err = run_cli(monkeypatch, capsys, "pretrain", "--data", corpus_dir, "--tokenizer", tiny_model_dir,
                               "--layers", 2, "--dim", 32, "--heads", 2, "--block-size", 32, "--batch-size", 8,
                               "--steps", 30, "--lr", 3e-3, "--warmup", 3, "--eval-every", 30, "--save-every", 30,
                               "--device", "cuda", "--precision", precision, "--out", out)
        assert code == 0, err
        losses = [r["loss"] for r in metrics_records(out) if "loss" in r]
        assert losses[-1] < losses[0]
