"""Corpus -> cached token ids -> batches: an exact stream, a safe cache, a reproducible batch order."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxlm.errors import UserError
from ctxlm.paths import data_root, dataset_path
from ctxlm.pretrain.corpus import BlockBatches, TokenizedCorpus, TokenSpan
from ctxlm.textfiles import find_text_files, read_documents
from helpers import write_file

EOD = 256  # the byte encoder's end-of-document id


def encode_bytes(texts: list[str]) -> list[list[int]]:
    return [list(t.encode("utf-8")) for t in texts]


class WordEncoder:
    """Whitespace words and newlines to ids, growing its vocabulary; counts its calls."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<eod>": 0}
        self.calls = 0

    def __call__(self, texts: list[str]) -> list[list[int]]:
        self.calls += 1
        return [[self.vocab.setdefault(w, len(self.vocab)) for w in re.findall(r"\S+|\n", t)] for t in texts]


def build(corpus: Path, cache: Path, encode=encode_bytes, vocab_size: int = 257, **kw) -> TokenizedCorpus:
    kw.setdefault("end_of_document", [EOD])
    kw.setdefault("fingerprint", "test")
    return TokenizedCorpus.build(corpus, encode, vocab_size, cache, show_progress=False, **kw)


# --- files and documents --------------------------------------------------------------------------


def test_find_text_files_recursive_sorted_with_gz(tmp_path):
    for name in ["b.txt", "a.txt.gz", "sub/c.txt", "notes.md", "sub/d.json"]:
        write_file(tmp_path / name, "x\n")
    assert [p.relative_to(tmp_path).as_posix() for p in find_text_files(tmp_path)] == [
        "a.txt.gz",
        "b.txt",
        "sub/c.txt",
    ]
    assert find_text_files(tmp_path / "notes.md") == [tmp_path / "notes.md"]  # a named file is taken as is


def test_read_documents_decodes_gz_and_skips_blank_files(tmp_path):
    write_file(tmp_path / "1.txt.gz", "héllo\nwörld\n")
    write_file(tmp_path / "2.txt", "  \n\n")
    write_file(tmp_path / "3.txt", "last, no newline")
    documents = read_documents(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 files, empty or whitespace only: 2\.txt"):
        assert list(documents) == ["héllo\nwörld\n", "last, no newline"]
    assert documents.blank_files == [tmp_path / "2.txt"]


# --- the token stream and its cache ---------------------------------------------------------------


@pytest.mark.parametrize("chunk_chars", [1, 7, 1 << 16])
def test_stream_equals_encoding_each_whole_file(tmp_path, chunk_chars):
    texts = {
        "a.txt": "first line\nsecond — ünïcode ✓\n\n",
        "b.txt.gz": "\n\nleading blank lines\nno final newline",
        "c/d.txt": "".join(f"line {i}\n" for i in range(50)),
    }
    for name, text in texts.items():
        write_file(tmp_path / "corpus" / name, text)
    corpus = build(tmp_path / "corpus", tmp_path / "cache", chunk_chars=chunk_chars)
    expected = []
    for name in sorted(texts):  # "a.txt" < "b.txt.gz" < "c/d.txt"
        expected += list(texts[name].encode("utf-8")) + [EOD]
    assert corpus.ids.tolist() == expected
    assert len(corpus) == len(expected)


def test_word_stream_equals_whole_text_for_a_line_level_encoder(tmp_path):
    text = "".join(f"w{i % 13} w{i % 7} .\n" for i in range(300))
    write_file(tmp_path / "corpus.txt", text)
    encoder = WordEncoder()
    corpus = build(tmp_path / "corpus.txt", tmp_path / "c", encoder, 100, end_of_document=[0], chunk_chars=5)
    assert encoder.calls > 1  # the text really went through in several calls
    assert corpus.ids.tolist() == encoder([text])[0] + [0]


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path):
    file = write_file(tmp_path / "corpus" / "a.txt", "one two\nthree\n")
    encoder = WordEncoder()
    first = build(tmp_path / "corpus", tmp_path / "cache", encoder, 100, end_of_document=[0])
    assert encoder.calls == 1
    second = build(tmp_path / "corpus", tmp_path / "cache", encoder, 100, end_of_document=[0])
    assert encoder.calls == 1 and second.path == first.path
    assert second.ids.tolist() == first.ids.tolist()
    assert isinstance(second.ids, np.memmap) and not second.ids.flags.writeable

    write_file(file, "one two\nthree four\n")
    third = build(tmp_path / "corpus", tmp_path / "cache", encoder, 100, end_of_document=[0])
    assert encoder.calls == 2 and third.path != first.path
    assert len(third) == len(first) + 1
    assert TokenizedCorpus.open(third.path).ids.tolist() == third.ids.tolist()


def test_cache_key_depends_on_the_fingerprint(tmp_path):
    write_file(tmp_path / "a.txt", "text\n")
    a = build(tmp_path / "a.txt", tmp_path / "c", fingerprint="tok-1")
    b = build(tmp_path / "a.txt", tmp_path / "c", fingerprint="tok-2")
    assert a.path != b.path


def test_interrupted_build_leaves_no_cache(tmp_path):
    write_file(tmp_path / "a.txt", "".join(f"line {i}\n" for i in range(500)))
    calls = 0

    def failing(texts):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return encode_bytes(texts)

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "a.txt", tmp_path / "cache", failing, chunk_chars=1)
    assert list((tmp_path / "cache").iterdir()) == []
    corpus = build(tmp_path / "a.txt", tmp_path / "cache", chunk_chars=1)  # a clean rebuild works
    assert len(corpus) == len((tmp_path / "a.txt").read_bytes()) + 1


def test_dtype_follows_vocab_size(tmp_path):
    write_file(tmp_path / "a.txt", "a b\n")
    small = build(tmp_path / "a.txt", tmp_path / "cache")
    assert small.ids.dtype == np.uint16
    wide = lambda texts: [[69_999, 65_536] for _ in texts]
    big = build(tmp_path / "a.txt", tmp_path / "cache", wide, 70_000, end_of_document=[69_998])
    assert big.ids.dtype == np.uint32
    assert big.ids.tolist() == [69_999, 65_536, 69_998]


def test_ids_outside_the_vocabulary_are_a_bug(tmp_path):
    write_file(tmp_path / "a.txt", "a\n")
    with pytest.raises(ValueError, match="vocab_size=257"):
        build(tmp_path / "a.txt", tmp_path / "cache", lambda texts: [[300] for _ in texts])
    assert list((tmp_path / "cache").iterdir()) == []


def test_split_is_contiguous_views(tmp_path):
    write_file(tmp_path / "a.txt", "x" * 999)
    corpus = build(tmp_path / "a.txt", tmp_path / "cache")  # 999 bytes + EOD = 1000 tokens
    train, valid = corpus.split(0.1)
    assert (len(train), len(valid)) == (900, 100)
    assert train.block(0, 900).tolist() + valid.block(0, 100).tolist() == corpus.ids.tolist()
    assert np.shares_memory(valid.block(0, 100), corpus.ids)
    train, valid = corpus.split(0.0)
    assert (len(train), len(valid)) == (1000, 0)


# --- batches --------------------------------------------------------------------------------------


def arange_span(num_tokens: int) -> TokenSpan:
    return TokenSpan(np.arange(num_tokens, dtype=np.uint32))


def test_targets_are_inputs_shifted_by_one():
    batches = BlockBatches(arange_span(8 * 20 + 1), block_size=8, batch_size=4, seed=0)
    x, y = batches.batch(3)
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.all(x[:, 0] % 8 == 0)  # windows start on the stride


def test_every_window_once_per_epoch_and_epochs_differ():
    block, windows, batch = 4, 24, 6
    batches = BlockBatches(arange_span(block * windows + 1), block, batch, seed=1)
    assert len(batches) == windows // batch
    orders = []
    for epoch in range(3):
        steps = range(epoch * len(batches), (epoch + 1) * len(batches))
        order = torch.cat([batches.batch(s)[0][:, 0] // block for s in steps]).tolist()
        assert sorted(order) == list(range(windows))
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]


def test_batches_are_a_pure_function_of_seed_and_step():
    span = arange_span(16 * 50 + 1)
    a = BlockBatches(span, 16, 5, seed=7)
    b = BlockBatches(span, 16, 5, seed=7)
    other = BlockBatches(span, 16, 5, seed=8)
    assert all(torch.equal(a.batch(s)[0], b.batch(s)[0]) for s in range(len(a)))
    assert not all(torch.equal(a.batch(s)[0], other.batch(s)[0]) for s in range(len(a)))


def test_resume_in_a_later_epoch_matches_an_uninterrupted_run():
    span = arange_span(8 * 30 + 1)
    running = BlockBatches(span, 8, 4, seed=3)
    seen = [running.batch(s) for s in range(3 * len(running))]
    step = 2 * len(running) + 2  # in epoch 2
    x, y = BlockBatches(span, 8, 4, seed=3).batch(step)
    assert torch.equal(x, seen[step][0]) and torch.equal(y, seen[step][1])


def test_eval_batches_cover_every_window_in_order():
    batches = BlockBatches(TokenSpan(np.arange(1000, dtype=np.uint16), 100, 100 + 10 * 7 + 1), 10, 3, seed=0)
    xs = [x for x, _ in batches.eval_batches()]
    assert [len(x) for x in xs] == [3, 3, 1]  # the last batch may be smaller
    assert torch.cat(xs)[:, 0].tolist() == [100 + 10 * i for i in range(7)]
    assert len(list(batches.eval_batches(max_batches=2))) == 2


# --- errors users can make ------------------------------------------------------------------------


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="nowhere.*not found"):
        find_text_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    write_file(tmp_path / "empty" / "readme.md", "not a corpus")
    with pytest.raises(UserError, match="empty: no .txt or .txt.gz files"):
        build(tmp_path / "empty", tmp_path / "cache")


def test_corpus_of_blank_files(tmp_path):
    write_file(tmp_path / "corpus" / "a.txt", "")
    write_file(tmp_path / "corpus" / "b.txt", " \n\t\n")
    with pytest.raises(UserError, match="no text, all 2 file"):
        build(tmp_path / "corpus", tmp_path / "cache")
    with pytest.raises(UserError, match="no text"):
        list(read_documents(tmp_path / "corpus"))
    assert list((tmp_path / "cache").iterdir()) == []


def test_binary_file(tmp_path):
    write_file(tmp_path / "model.txt", b"PK\x03\x04\x00\x00binary")
    with pytest.raises(UserError, match=r"model\.txt: looks like a binary file, expected UTF-8 text"):
        build(tmp_path / "model.txt", tmp_path / "cache")


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.txt.gz"])
def test_non_utf8_names_file_line_and_column(tmp_path, name):
    good = "abcdefghij\n" * 1000  # past the 8 KiB sniffed at first, so line counting continues across it
    write_file(tmp_path / name, good.encode() + "caf\xe9\n".encode("latin-1"))
    message = rf"{name}:1001: not valid UTF-8 \(byte 0xe9 at column 4\)"
    with pytest.raises(UserError, match=message):
        list(read_documents(tmp_path / name))
    with pytest.raises(UserError, match=message):
        build(tmp_path / name, tmp_path / "cache")


def test_span_too_short_for_the_block_size():
    with pytest.raises(UserError, match="has 8 tokens, too few for block size 8"):
        BlockBatches(arange_span(8), block_size=8, batch_size=1, seed=0)
    few = BlockBatches(arange_span(9), block_size=8, batch_size=2, seed=0)
    assert len(few) == 0 and len(list(few.eval_batches())) == 1  # enough to evaluate, not to train
    with pytest.raises(UserError, match="fewer than one batch of 2"):
        few.batch(0)


def test_data_root_and_missing_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path))
    assert data_root() == tmp_path
    with pytest.raises(UserError, match="data set 'wikitext2' not found under .*CTXLM_DATA"):
        dataset_path("wikitext2", "valid.txt.gz")
    write_file(tmp_path / "wikitext2" / "valid.txt.gz", "x\n")
    assert dataset_path("wikitext2", "valid.txt.gz") == tmp_path / "wikitext2" / "valid.txt.gz"
    with pytest.raises(UserError, match="has no test.txt.gz"):
        dataset_path("wikitext2", "test.txt.gz")


# --- the real thing, when it is here --------------------------------------------------------------


def test_wikitext2_valid_comes_through_whole(tmp_path):
    path = data_root() / "wikitext2" / "valid.txt.gz"
    if not path.exists():
        pytest.skip(f"WikiText-2 not found at {path} (set CTXLM_DATA to the data folder to run this check)")
    (text,) = read_documents(path)
    assert text.count("\n") == 3760
    encoder = WordEncoder()
    corpus = build(path, tmp_path / "cache", encoder, 1 << 16, end_of_document=[0])
    ids = np.asarray(corpus.ids)
    newline = encoder.vocab["\n"]
    assert (ids == newline).sum() == 3760  # every line, across the chunk cuts
    assert len(ids) == 3760 + 213_886 + 1  # newlines + whitespace tokens (PROVENANCE.md) + end of document
