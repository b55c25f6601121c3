"""Training speed options: gradient checkpointing, bf16 autocast, torch.compile; length-grouped batches."""

import pytest
import torch

from ctxlm.config import BertConfig, ElmoConfig, GPTConfig
from ctxlm.errors import UserError
from ctxlm.models import build_model
from ctxlm.nn.blocks import use_gradient_checkpointing
from ctxlm.train import TrainConfig, Trainer
from ctxlm.transfer.inputs import batches_per_epoch, bucketed_batches
from helpers import metrics_records, run_cli
from tolerances import assert_fp_close

pytestmark = pytest.mark.fp32  # training options against the fp32 run; the sample at the end of a run is incidental


def saved_bytes_and_grads(model, ids, seed: int):
    """Bytes autograd keeps for backward, and the gradients, of one training step from `seed`."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.backbone(ids).last.square().mean()  # any scalar of every block's output
    loss.backward()
    return sum(saved), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.numeric
@pytest.mark.parametrize("config", [
    GPTConfig(model_type="gpt2", vocab_size=64, max_positions=64, dim=32, n_layers=4, n_heads=2, dropout=0.1),
    BertConfig(vocab_size=64, max_positions=64, dim=32, n_layers=4, n_heads=2, dropout=0.1),
], ids=["gpt2", "bert"])
def test_gradient_checkpointing_keeps_less_and_gives_the_same_gradients(config):
    torch.manual_seed(0)
    model = build_model(config).train()
    ids = torch.randint(0, 64, (4, 64))
    plain_bytes, plain = saved_bytes_and_grads(model, ids, seed=1)
    assert use_gradient_checkpointing(model) == 4
    ckpt_bytes, ckpt = saved_bytes_and_grads(model, ids, seed=1)
    assert ckpt_bytes < 0.5 * plain_bytes  # each block keeps its input only
    assert plain.keys() == ckpt.keys()
    for name in plain:  # dropout is replayed with the same masks in the recomputation
        # float32 rounding (tests/tolerances.py), were the recomputation to sum in another order: sums of up to 256
        # terms (4 x 64 positions into each weight's gradient), 6 stages forward and 6 back
        assert_fp_close(ckpt[name], plain[name], terms=256, depth=12, msg=name)


def test_trainer_refuses_checkpointing_without_transformer_blocks(tmp_path):
    model = build_model(ElmoConfig(vocab_size=10, dim=8, cell_dim=16, char_dim=4, filters=[[1, 4]], n_highway=0))
    with pytest.raises(UserError, match="transformer blocks; this elmo has none"):
        Trainer(model, lambda m, b: (torch.zeros(()), {}), lambda i: None,
                TrainConfig(gradient_checkpointing=True), tmp_path)
    with pytest.raises(UserError, match="precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16").validate()


def pretrain_tiny(monkeypatch, capsys, corpus_dir, tiny_model_dir, out, *extra):
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "--data", corpus_dir, "--tokenizer", tiny_model_dir,
                           "--layers", 2, "--dim", 32, "--heads", 2, "--block-size", 32, "--batch-size", 8,
                           "--warmup", 5, "--eval-every", 40, "--save-every", 40, "--out", out, *extra)
    assert code in (0, None), err
    return metrics_records(out)


def test_bf16_autocast_trains_as_well_as_fp32(monkeypatch, capsys, tmp_path, corpus_dir, tiny_model_dir,
                                              isolated_cache):
    runs = {precision: pretrain_tiny(monkeypatch, capsys, corpus_dir, tiny_model_dir, tmp_path / precision,
                                     "--steps", 40, "--lr", 3e-3, "--precision", precision)
            for precision in ("fp32", "bf16")}
    valid = {p: [r["valid_loss"] for r in records if "valid_loss" in r][-1] for p, records in runs.items()}
    first = {p: [r["loss"] for r in records if "loss" in r][0] for p, records in runs.items()}
    assert valid["bf16"] < 0.85 * first["bf16"]  # it learns
    assert valid["bf16"] == pytest.approx(valid["fp32"], rel=0.03)  # and as much (validation runs in fp32)
    assert valid["bf16"] != valid["fp32"]  # the option did change the arithmetic


def test_compiled_training_matches_eager(monkeypatch, capsys, tmp_path, corpus_dir, tiny_model_dir, isolated_cache):
    runs = [pretrain_tiny(monkeypatch, capsys, corpus_dir, tiny_model_dir, tmp_path / name, "--steps", 3,
                          "--dropout", 0, *flags) for name, flags in (("eager", ()), ("compiled", ("--compile",)))]
    eager, compiled = ([r["loss"] for r in records if "loss" in r] for records in runs)
    # fused kernels sum in other orders: float32 rounding (tests/tolerances.py) of sums of up to 300 terms (the
    # vocabulary; 8 x 32 positions), 3 steps of about 10 stages (5 forward, 5 back)
    assert_fp_close(compiled, eager, terms=300, depth=3 * 10, dtype=torch.float32)


def test_length_grouped_batches_are_an_epoch_with_less_padding():
    lengths = [5 + (i * 37) % 300 for i in range(500)]
    generator = torch.Generator().manual_seed(0)
    grouped = bucketed_batches(lengths, 8, generator, pool=10)
    assert len(grouped) == batches_per_epoch(500, 8, pool=10)
    assert sorted(i for batch in grouped for i in batch) == list(range(500))
    plain = bucketed_batches(lengths, 8, torch.Generator().manual_seed(0), pool=1)
    padded = {name: sum(len(b) * max(lengths[i] for i in b) for b in batches)
              for name, batches in (("grouped", grouped), ("plain", plain))}
    assert padded["grouped"] < 0.75 * padded["plain"]


def test_device_names_are_checked(monkeypatch, capsys, tmp_path):
    from ctxlm.train import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="expected auto, cpu, cuda"):
        pick_device("tpu-ish")
    if not torch.cuda.is_available():  # asking for a GPU this machine lacks is a user error, not a crash
        assert pick_device("auto") == torch.device("cpu")
        code, _, err = run_cli(monkeypatch, capsys, "pretrain", "--device", "cuda", "--data", tmp_path,
                               "--out", tmp_path / "run")
        assert code == 1 and "no CUDA GPU" in err, err
