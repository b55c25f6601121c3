"""BERT pretraining data: masking rates, special tokens, whole words, NSP pairs, determinism, errors."""

import pytest
import torch

from ctxlm.errors import UserError
from ctxlm.pretrain.masked_lm import (
    IGNORE,
    MaskedLMBatches,
    Vocabulary,
    build_instances,
    mask_tokens,
    mlm_nsp_objective,
    split_documents,
)

SPECIALS = dict(pad_id=0, cls_id=2, sep_id=3, mask_id=4)
VOCAB = Vocabulary(**SPECIALS, size=1000, special_ids=frozenset({0, 1, 2, 3, 4}))


def documents(n_docs=40, sentences=12, length=6):
    """Token 100 * (doc + 1) + sentence: every token says which document and sentence it comes from."""
    return [[[100 * (d + 1) + s] * length for s in range(sentences)] for d in range(n_docs)]


def test_split_documents_on_blank_lines_and_headings():
    text = " = Title = \n first one . second one .\n\n third .\n = = Part = = \n fourth !\n"
    assert split_documents(text) == [["first one .", "second one ."], ["third ."], ["fourth !"]]


def test_masking_rates_and_special_tokens():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (400, 60))
    ids[:, 0], ids[:, 30], ids[:, -1] = 2, 3, 3  # [CLS] ... [SEP] ... [SEP]
    ids[:, 50:59] = 0  # padding
    candidates = ~torch.isin(ids, torch.tensor([0, 1, 2, 3, 4]))
    inputs, labels = mask_tokens(ids, candidates, VOCAB, generator)
    chosen = labels != IGNORE
    assert not chosen[~candidates].any()  # specials and padding are never chosen
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    rate = chosen.sum() / candidates.sum()
    assert abs(rate - 0.15) < 0.01, rate
    n = chosen.sum().item()
    masked = (inputs[chosen] == 4).sum() / n
    kept = (inputs[chosen] == ids[chosen]).sum() / n
    replaced = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(replaced - 0.1) < 0.02, (masked, kept)
    assert not torch.isin(inputs[chosen & (inputs != 4) & (inputs != ids)], torch.tensor([0, 1, 2, 3])).any()


def test_whole_word_masking_never_splits_a_word():
    continuation = torch.zeros(1000, dtype=torch.bool)
    continuation[500:] = True  # ids >= 500 are "##" pieces
    vocab = Vocabulary(**SPECIALS, size=1000, special_ids=VOCAB.special_ids, continuation=continuation)
    generator = torch.Generator().manual_seed(1)
    ids = torch.where(torch.rand(300, 40) < 0.4, torch.randint(500, 1000, (300, 40)), torch.randint(5, 500, (300, 40)))
    ids[:, 0] = 10  # rows start with a word
    candidates = torch.ones_like(ids, dtype=torch.bool)
    _, labels = mask_tokens(ids, candidates, vocab, generator, whole_word=True)
    chosen = labels != IGNORE
    starts = ~continuation[ids]
    word = starts.long().cumsum(1)
    for row in range(300):
        for w in word[row].unique():
            in_word = chosen[row][word[row] == w]
            assert in_word.all() or not in_word.any()
    words = starts.sum()
    chosen_words = (chosen & starts).sum()
    assert abs(chosen_words / words - 0.15) < 0.015


def test_pairs_are_balanced_and_really_next_or_random():
    inst = build_instances(documents(), VOCAB, max_length=64, seed=0)
    assert abs(inst.is_random_next.mean() - 0.5) < 0.05, inst.is_random_next.mean()
    for k in range(len(inst)):
        row = inst.ids[inst.offsets[k]:inst.offsets[k + 1]].tolist()
        assert len(row) <= 64 and row[0] == 2 and row[-1] == 3
        cut = inst.first_segment_length[k]
        a, b = row[1:cut - 1], row[cut:-1]
        assert row[cut - 1] == 3 and a and b
        doc_a, doc_b = {t // 100 for t in a}, {t // 100 for t in b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        if inst.is_random_next[k]:
            assert doc_a != doc_b
        else:  # B continues A: same document, and its first sentence is A's last or the one after
            assert doc_a == doc_b and 0 <= b[0] % 100 - a[-1] % 100 <= 1


def test_batches_are_deterministic_and_resume_exactly():
    inst = build_instances(documents(), VOCAB, max_length=64, seed=0)
    batches = MaskedLMBatches(inst, VOCAB, batch_size=8, seed=3)
    step = len(batches) + 2  # in the second epoch
    first, again = batches.batch(step), MaskedLMBatches(inst, VOCAB, batch_size=8, seed=3).batch(step)
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(batches.batch(0)["ids"], batches.batch(len(batches))["ids"])  # a new order per epoch
    b = batches.batch(0)
    assert b["ids"].shape == b["segments"].shape == b["mlm_labels"].shape and b["nsp_labels"].shape == (8,)
    assert (b["segments"][~b["mask"]] == 0).all()


def test_objective_trains_a_tiny_bert():
    from ctxlm.config import BertConfig
    from ctxlm.models.bert import BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=1000, max_positions=64, dim=32, n_layers=2, n_heads=2, dropout=0.0,
                                 attn_dropout=0.0))
    batches = MaskedLMBatches(build_instances(documents(n_docs=9), VOCAB, max_length=64, seed=0), VOCAB, 16, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss, metrics = mlm_nsp_objective(model, batches.batch(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        assert all(0 <= metrics[k] <= 1 for k in ("mlm_accuracy", "nsp_accuracy"))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses


def test_errors():
    with pytest.raises(UserError, match="at least 2 non-empty documents"):
        build_instances([[[7, 8, 9]], [[]], []], VOCAB, max_length=64, seed=0)
    with pytest.raises(UserError, match="too short"):
        build_instances(documents(), VOCAB, max_length=5, seed=0)
    with pytest.raises(UserError, match="fewer than one batch"):
        MaskedLMBatches(build_instances(documents(n_docs=2, sentences=2), VOCAB, 64, 0), VOCAB, 512, 0)
