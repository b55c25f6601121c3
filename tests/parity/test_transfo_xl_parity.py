"""Transformer-XL against the reference implementation (Hugging Face transformers 4.x, where TransfoXL lives under
models/deprecated; version 5 removed it). Not part of the default suite (pyproject ignores tests/parity): run
`make parity-xl`, which builds its own environment (.venv-xl) with transformers<5.

Random small TransfoXLLMHeadModels, with and without the adaptive softmax, projected or not, shared or per-layer
position biases, post- or pre-LN, same_length on and off, clamped distances, memory shorter or longer than a
segment, are saved in the Hub layout and converted by ctxlm; then several consecutive segments, memory carried
from one to the next, must give the same log-probabilities, the same memory and the same loss.
"""

import pytest
import torch
import torch.nn.functional as F

import ctxlm

reference = pytest.importorskip("transformers.models.deprecated.transfo_xl.modeling_transfo_xl")
from transformers.models.deprecated.transfo_xl.configuration_transfo_xl import TransfoXLConfig  # noqa: E402

BASE = dict(vocab_size=100, d_model=16, d_embed=16, n_head=2, d_head=8, d_inner=32, n_layer=3, dropout=0.0,
            dropatt=0.0, mem_len=6, clamp_len=0, same_length=False, cutoffs=[], div_val=1)
CASES = {
    "full-softmax": {},
    "full-softmax-projected-same-length": dict(d_embed=12, same_length=True, clamp_len=4),
    "adaptive-div2-same-length-clamped": dict(cutoffs=[20, 50], div_val=2, same_length=True, clamp_len=5),
    "adaptive-div1-projected-shared-biases-pre-ln": dict(cutoffs=[20, 50], d_embed=12, untie_r=False,
                                                         pre_lnorm=True),
    "adaptive-div4-untied-projs-short-memory": dict(cutoffs=[20, 50], div_val=4, proj_share_all_but_first=False,
                                                    mem_len=3, same_length=True),
    "wt103-shape-long-memory": dict(cutoffs=[20, 40, 80], div_val=4, d_embed=64, mem_len=12, clamp_len=10,
                                    same_length=True),
}
SEGMENT, N_SEGMENTS, BATCH = 5, 4, 2


@pytest.fixture(autouse=True)
def type_as_with_dtype(monkeypatch):
    """transformers 4.57's TransfoXLModel.forward calls `tensor.type_as(dtype=...)`, which no torch accepts
    (type_as takes a tensor): its relative positions are meant to be int64 distances cast to the embeddings'
    dtype. This shim does exactly that cast, and nothing else, for the reference."""
    original = torch.Tensor.type_as

    def type_as(self, other=None, *, dtype=None):
        return self.to(dtype) if other is None else original(self, other)

    monkeypatch.setattr(torch.Tensor, "type_as", type_as)


def reference_model(options: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = reference.TransfoXLLMHeadModel(TransfoXLConfig(**{**BASE, **options})).eval()
    with torch.no_grad():  # away from the initialisation's zeros and ones, so that every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_segments_with_memory_match_the_reference(tmp_path, name):
    ref = reference_model(CASES[name])
    # Shared position biases (untie_r false) are one tensor under every layer's name, which the reference saves
    # only as a legacy pytorch_model.bin (read with weights_only): that path is checked too.
    ref.save_pretrained(tmp_path / "hub", safe_serialization=ref.config.untie_r)
    ctxlm.convert(tmp_path / "hub", tmp_path / "native")
    torch.manual_seed(1)
    ids = torch.randint(0, BASE["vocab_size"], (BATCH, SEGMENT * N_SEGMENTS))
    for model in (ctxlm.load(tmp_path / "hub"), ctxlm.load(tmp_path / "native")):
        # ctxlm starts from an empty memory (the paper's code); the reference's default pads it with zeros, so
        # it is given an empty one.
        theirs = [torch.empty(0, BATCH, BASE["d_model"]) for _ in range(ref.config.n_layer)]
        ours = None
        for s in range(N_SEGMENTS):
            segment = ids[:, s * SEGMENT:(s + 1) * SEGMENT]
            with torch.no_grad():
                expected = ref(segment, mems=theirs)
                got = model(segment, memory=ours)
            torch.testing.assert_close(F.log_softmax(got.logits, -1), expected.prediction_scores, atol=1e-4, rtol=0)
            for mine, their in zip(got.hidden.memory, expected.mems, strict=True):
                torch.testing.assert_close(mine, their.transpose(0, 1), atol=1e-4, rtol=0)
            theirs, ours = expected.mems, got.hidden.memory


@pytest.mark.parametrize("name", ["full-softmax", "adaptive-div2-same-length-clamped"])
def test_loss_and_the_references_zero_memory_match(tmp_path, name):
    ref = reference_model(CASES[name])
    ref.save_pretrained(tmp_path / "hub")
    model = ctxlm.load(tmp_path / "hub")
    torch.manual_seed(2)
    ids = torch.randint(0, BASE["vocab_size"], (BATCH, SEGMENT))
    zeros = [torch.zeros(BATCH, ref.config.mem_len, BASE["d_model"]) for _ in range(ref.config.n_layer)]
    targets = torch.cat([ids[:, 1:], torch.full((BATCH, 1), -100)], dim=1)  # ctxlm's targets are not shifted
    with torch.no_grad():
        expected = ref(ids, labels=ids)  # mems None: the reference's mem_len zero vectors
        got = model(ids, memory=zeros, targets=targets)
        logits = model(ids, memory=zeros).logits
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-4, rtol=0)
    with torch.no_grad():
        scores = ref(ids).prediction_scores
    torch.testing.assert_close(F.log_softmax(logits, -1), scores, atol=1e-4, rtol=0)
