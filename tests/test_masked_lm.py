"""BERT pretraining data: masking rates, special tokens, whole words, NSP pairs, determinism, errors, objective."""

import random

import numpy as np
import pytest
import torch

from ctxlm.errors import UserError
from ctxlm.pretrain.masked_lm import (
    IGNORE,
    MaskedLMBatches,
    Vocabulary,
    build_instances,
    encode_documents,
    mask_tokens,
    mlm_nsp_objective,
    seeded,
    split_documents,
    word_starts,
)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = dict(pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK)
SPECIAL_IDS = frozenset({PAD, UNK, CLS, SEP, MASK})
BASE = 10  # text ids are BASE + 1000 * document + position in the document
VOCAB = Vocabulary(**SPECIALS, size=BASE + 1000 * 300, special_ids=SPECIAL_IDS)


def documents(n_docs=60, sentences=12, seed=0, max_sentence=12):
    """Sentences of random lengths whose ids say where they come from: BASE + 1000 * doc + position."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        doc, position = [], 0
        for _ in range(sentences):
            n = rng.randint(1, max_sentence)
            doc.append(list(range(BASE + 1000 * d + position, BASE + 1000 * d + position + n)))
            position += n
        docs.append(doc)
    return docs


def where(ids):
    """(document, position) arrays of text ids."""
    ids = np.asarray(ids) - BASE
    return ids // 1000, ids % 1000


def pairs(inst):
    for k in range(len(inst)):
        row = inst.ids[inst.offsets[k]:inst.offsets[k + 1]]
        cut = inst.first_segment_length[k]
        yield row, row[1:cut - 1], row[cut:-1], int(inst.is_random_next[k])


# -- documents ------------------------------------------------------------------------------------------------
def test_split_documents_on_blank_lines_and_headings():
    text = " = Title = \n first one . second one .\n\n third .\n = = Part = = \n fourth !\n\n\n"
    assert split_documents(text) == [["first one .", "second one ."], ["third ."], ["fourth !"]]


@pytest.mark.parametrize("text", ["", "\n \n\n", " = Title = \n\n = = Part = = \n"])
def test_split_documents_without_sentences_is_a_user_error(text):
    with pytest.raises(UserError, match="no sentences"):
        split_documents(text)


def test_encode_documents_keeps_the_document_structure():
    docs = [["a b", "c"], ["d e f"]]
    encoded = encode_documents(docs, lambda texts: [[len(w) + 10 for w in t.split()] for t in texts])
    assert [[s.tolist() for s in doc] for doc in encoded] == [[[11, 11], [11]], [[11, 11, 11]]]


# -- pairs ----------------------------------------------------------------------------------------------------
def test_pairs_are_balanced_and_really_next_or_random():
    max_length = 32
    inst = build_instances(documents(n_docs=250), VOCAB, max_length, seed=0, dupe_factor=4)
    assert len(inst) > 2500, len(inst)
    assert abs(inst.is_random_next.mean() - 0.5) < 0.03, inst.is_random_next.mean()
    assert inst.lengths().max() <= max_length and inst.lengths().min() >= 5
    exact = 0
    for row, a, b, label in pairs(inst):
        assert row[0] == CLS and row[len(a) + 1] == SEP and row[-1] == SEP
        assert len(a) and len(b) and not np.isin(np.concatenate([a, b]), list(SPECIAL_IDS)).any()
        (doc_a, pos_a), (doc_b, pos_b) = where(a), where(b)
        assert len(set(doc_a)) == 1 and len(set(doc_b)) == 1  # each side is text of one document...
        assert (np.diff(pos_a) == 1).all() and (np.diff(pos_b) == 1).all()  # ...and contiguous text
        if label == 1:  # NotNext: B from another document
            assert doc_a[0] != doc_b[0]
        else:  # IsNext: B is what follows A (up to tokens truncated at A's back and B's front)
            assert doc_a[0] == doc_b[0] and pos_b[0] > pos_a[-1]
            if len(row) < max_length:  # nothing was truncated: B starts right where A ends
                assert pos_b[0] == pos_a[-1] + 1
                exact += 1
    assert exact > 100
    assert inst.documents == 250 and inst.empty_documents == 0


def test_short_sequences_and_dupe_factor():
    docs = documents(n_docs=100)
    one = build_instances(docs, VOCAB, 64, seed=0)
    two = build_instances(docs, VOCAB, 64, seed=0, dupe_factor=2)
    assert 1.7 < len(two) / len(one) < 2.3
    never_short = build_instances(docs, VOCAB, 64, seed=0, short_seq_prob=0.0)
    always_short = build_instances(docs, VOCAB, 64, seed=0, short_seq_prob=1.0)
    assert always_short.lengths().mean() < never_short.lengths().mean() - 10
    assert np.array_equal(one.ids, build_instances(docs, VOCAB, 64, seed=0).ids)  # a pure function of the seed
    assert not np.array_equal(one.ids, build_instances(docs, VOCAB, 64, seed=1).ids)


def test_single_sentence_documents_are_used():
    """A one-sentence document gives IsNext pairs cut inside the sentence, or an A for a NotNext pair."""
    docs = documents(n_docs=200, sentences=1, max_sentence=30)
    inst = build_instances(docs, VOCAB, 64, seed=0)
    assert len(inst) >= 180 and 0.4 < inst.is_random_next.mean() < 0.6
    for _, a, b, label in pairs(inst):
        (doc_a, pos_a), (doc_b, pos_b) = where(a), where(b)
        if label == 0:
            assert doc_a[0] == doc_b[0] and pos_a[-1] + 1 == pos_b[0]


def test_empty_documents_are_skipped_and_counted():
    docs = [[], [[]], [[], []], *documents(n_docs=5)]
    docs.insert(4, [[BASE + 1000 * 200]])  # one-token, one-sentence: NotNext only (IsNext draws are skipped)
    inst = build_instances(docs, VOCAB, 32, seed=0, dupe_factor=20)
    assert inst.empty_documents == 3 and inst.documents == 6 and inst.skipped_chunks > 0
    assert "3 empty documents skipped" in inst.describe()
    for _, a, _, label in pairs(inst):
        if where(a)[0][0] == 200:
            assert label == 1


def test_build_errors():
    with pytest.raises(UserError, match="at least 2 non-empty documents, got 1 \\(2 more had no tokens\\)"):
        build_instances([[[7, 8, 9]], [[]], []], VOCAB, max_length=64, seed=0)
    with pytest.raises(UserError, match="at least 2 non-empty documents, got 0"):
        build_instances([], VOCAB, max_length=64, seed=0)
    with pytest.raises(UserError, match="too short"):
        build_instances(documents(), VOCAB, max_length=7, seed=0)
    build_instances(documents(), VOCAB, max_length=8, seed=0)
    with pytest.raises(UserError, match="dupe factor"):
        build_instances(documents(), VOCAB, max_length=64, seed=0, dupe_factor=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_instances([[[5, 6]], [[VOCAB.size]]], VOCAB, max_length=64, seed=0)


# -- masking --------------------------------------------------------------------------------------------------
def rows_with_specials(n_rows=500, width=60, low=5, high=1000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (n_rows, width), generator=generator)
    ids[:, 0], ids[:, 30], ids[:, 49] = CLS, SEP, SEP  # [CLS] A [SEP] B [SEP] then padding
    ids[:, 10] = UNK
    ids[:, 50:] = PAD
    return ids, ~torch.isin(ids, torch.tensor(sorted(SPECIAL_IDS)))


def test_masking_rates_and_special_tokens():
    vocab = Vocabulary(**SPECIALS, size=1000, special_ids=SPECIAL_IDS)
    ids, candidates = rows_with_specials()
    assert candidates.sum() > 20_000
    inputs, labels = mask_tokens(ids, candidates, vocab, torch.Generator().manual_seed(0))
    chosen = labels != IGNORE
    assert not chosen[~candidates].any()  # specials and padding are never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == IGNORE).all()
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing changes off the chosen positions
    assert (chosen.sum(1) == round(0.15 * 46)).all()  # round(15 % of the 46 candidates) in every row
    n = chosen.sum().item()
    masked = (inputs[chosen] == MASK).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    replaced = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(replaced - 0.1) < 0.02, (masked, kept)
    randoms = inputs[chosen & (inputs != MASK) & (inputs != ids)]
    assert not torch.isin(randoms, torch.tensor(sorted(SPECIAL_IDS))).any() and randoms.max() < 1000


def test_selection_rate_over_varied_rows():
    """Rows of different lengths: 15 % of all candidates within 1 %, at least one per row, capped."""
    vocab = Vocabulary(**SPECIALS, size=1000, special_ids=SPECIAL_IDS)
    ids, candidates = rows_with_specials(n_rows=800, width=120, seed=1)
    lengths = torch.randint(3, 120, (800,), generator=torch.Generator().manual_seed(2))
    candidates &= torch.arange(120)[None] < lengths[:, None]
    _, labels = mask_tokens(ids, candidates, vocab, torch.Generator().manual_seed(3))
    chosen = labels != IGNORE
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.01
    assert (chosen.sum(1) >= (candidates.sum(1) > 0).long()).all()
    _, labels = mask_tokens(ids, candidates, vocab, torch.Generator().manual_seed(3), max_predictions=5)
    assert (labels != IGNORE).sum(1).max() == 5


def test_whole_word_masking_never_splits_a_word():
    continuation = torch.zeros(1000, dtype=torch.bool)
    continuation[500:] = True  # ids >= 500 are "##" pieces
    vocab = Vocabulary(**SPECIALS, size=1000, special_ids=SPECIAL_IDS, continuation=continuation)
    ids, candidates = rows_with_specials(n_rows=500)
    ids[:, 31] = 700  # a continuation right after [SEP] is a word of its own, not part of A's last word
    inputs, labels = mask_tokens(ids, candidates, vocab, torch.Generator().manual_seed(1), whole_word=True)
    chosen = labels != IGNORE
    assert not chosen[~candidates].any()
    starts = word_starts(ids, candidates, continuation)
    assert starts[:, 31].all() and starts[:, 1].all()
    word = starts.long().cumsum(1)
    for row in range(len(ids)):
        for w in word[row][candidates[row]].unique():
            in_word = chosen[row][(word[row] == w) & candidates[row]]
            assert in_word.all() or not in_word.any(), (row, w)
    # about 15 % of the tokens (not of the words), as Google's and Hugging Face's whole-word masking
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.015
    assert abs((inputs[chosen] == MASK).float().mean() - 0.8) < 0.02
    with pytest.raises(ValueError, match="continuation"):
        mask_tokens(ids, candidates, VOCAB, torch.Generator(), whole_word=True)


# -- batches --------------------------------------------------------------------------------------------------
def test_batches_hold_the_pairs_masked():
    inst = build_instances(documents(), VOCAB, 64, seed=0)
    batches = MaskedLMBatches(inst, VOCAB, batch_size=8, seed=3)
    b = batches.batch(0)
    assert set(b) == {"ids", "mask", "segments", "mlm_labels", "nsp_labels"}
    assert b["ids"].shape == b["segments"].shape == b["mlm_labels"].shape == b["mask"].shape
    assert b["ids"].shape[1] == int(b["mask"].sum(1).max()) <= 64  # padded to the longest row
    assert b["nsp_labels"].shape == (8,) and b["mask"].dtype == torch.bool
    assert (b["segments"][~b["mask"]] == 0).all() and (b["ids"][~b["mask"]] == PAD).all()
    order = torch.randperm(len(inst), generator=seeded(3, 0, 0))[:8].tolist()  # epoch 0's first 8 pairs
    for i, k in enumerate(order):
        row = torch.from_numpy(inst.ids[inst.offsets[k]:inst.offsets[k + 1]].astype(np.int64))
        n, cut = len(row), int(inst.first_segment_length[k])
        chosen = b["mlm_labels"][i] != IGNORE
        original = torch.where(chosen[:n], b["mlm_labels"][i, :n], b["ids"][i, :n])
        assert torch.equal(original, row)  # the labels restore the pair exactly
        assert (b["segments"][i, :cut] == 0).all() and (b["segments"][i, cut:n] == 1).all()
        assert b["nsp_labels"][i] == inst.is_random_next[k]
    fixed = MaskedLMBatches(inst, VOCAB, batch_size=8, seed=3, pad_to=64).batch(0)
    assert fixed["ids"].shape == (8, 64) and torch.equal(fixed["mlm_labels"][:, :b["ids"].shape[1]], b["mlm_labels"])


def test_batches_are_deterministic_and_resume_exactly():
    inst = build_instances(documents(), VOCAB, 64, seed=0)
    batches = MaskedLMBatches(inst, VOCAB, batch_size=8, seed=3)
    step = len(batches) + 2  # in the second epoch
    first = batches.batch(step)
    for again in (batches.batch(step), MaskedLMBatches(inst, VOCAB, batch_size=8, seed=3).batch(step)):
        for key in first:
            assert torch.equal(first[key], again[key]), key
    assert not torch.equal(batches.batch(0)["ids"], batches.batch(len(batches))["ids"])  # a new order per epoch
    assert not torch.equal(first["mlm_labels"], MaskedLMBatches(inst, VOCAB, 8, seed=4).batch(step)["mlm_labels"])
    # an epoch visits every pair once (but the last partial batch)
    seen = torch.cat([batches.batch(i)["nsp_labels"] for i in range(len(batches))])
    assert len(seen) == len(batches) * 8
    evals = list(batches.eval_batches()), list(batches.eval_batches())
    assert sum(len(e["ids"]) for e in evals[0]) == len(inst)
    assert all(torch.equal(x["ids"], y["ids"]) for x, y in zip(*evals, strict=True))
    assert len(list(batches.eval_batches(max_batches=2))) == 2


def test_batch_errors():
    inst = build_instances(documents(n_docs=2, sentences=2), VOCAB, 64, 0)
    with pytest.raises(UserError, match="fewer than one batch"):
        MaskedLMBatches(inst, VOCAB, 512, 0)
    with pytest.raises(UserError, match="whole-word"):
        MaskedLMBatches(inst, VOCAB, 1, 0, whole_word=True)
    with pytest.raises(UserError, match="pad_to"):
        MaskedLMBatches(inst, VOCAB, 1, 0, pad_to=4)


# -- objective ------------------------------------------------------------------------------------------------
def test_objective_trains_a_tiny_bert():
    from ctxlm.config import BertConfig
    from ctxlm.models.bert import BertModel

    vocab = Vocabulary(**SPECIALS, size=200, special_ids=SPECIAL_IDS)
    rng = random.Random(0)
    docs = [[[rng.choice(range(5 + 4 * (d % 5), 9 + 4 * (d % 5))) for _ in range(rng.randint(3, 9))]
             for _ in range(10)] for d in range(40)]  # five topics of 4 words in a vocabulary of 200
    batches = MaskedLMBatches(build_instances(docs, vocab, 48, seed=0), vocab, 16, seed=0)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=200, max_positions=48, dim=32, n_layers=2, n_heads=2, dropout=0.0,
                                 attn_dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss, metrics = mlm_nsp_objective(model, batches.batch(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        assert set(metrics) == {"mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"}
        assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
        assert all(0 <= metrics[k] <= 1 for k in ("mlm_accuracy", "nsp_accuracy"))
        assert torch.isclose(loss, metrics["mlm_loss"] + metrics["nsp_loss"])
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
