"""Long texts: which tokens each window, head+tail or cut keeps, and how the windows' vectors pool into one."""

import pytest
import torch

from ctxlm.errors import UserError
from ctxlm.nn.long_text import Frame, LongText, combine_windows, pool_windows, windows
from ctxlm.nn.pooling import pool
from ctxlm.tokenizers import WordTokenizer
from helpers import tiny_tokenizer

WINDOWS, HEAD_TAIL, TRUNCATE = LongText("windows"), LongText("head-tail"), LongText("truncate")


def text_positions(frame: Frame, length: int, pieces: list[list[int]]) -> list[list[int]]:
    """Each input's positions of text (its frame checked and removed)."""
    out = []
    for piece in pieces:
        assert piece[:frame.prefix] == list(range(frame.prefix))  # every input opens and closes as a text alone
        assert piece[len(piece) - frame.suffix:] == list(range(length - frame.suffix, length))
        out.append(piece[frame.prefix:len(piece) - frame.suffix])
    return out


@pytest.mark.parametrize("frame", [Frame(1, 1), Frame(0, 0), Frame(2, 1)])
@pytest.mark.parametrize("length", [5, 16, 17, 40, 41, 100])
def test_windows_cover_every_token_exactly_once(frame, length):
    pieces = windows(length, 16, frame, WINDOWS)
    assert all(len(p) <= 16 for p in pieces)
    text = text_positions(frame, length, pieces)
    assert [i for window in text for i in window] == list(range(frame.prefix, length - frame.suffix))
    room, text_length = 16 - frame.prefix - frame.suffix, length - frame.prefix - frame.suffix
    assert all(len(window) == room for window in text[:-1])  # full windows, the last one what is left
    assert len(text) == (1 if length <= 16 else -(-text_length // room))


@pytest.mark.parametrize("stride", [1, 5, 13, 14])
def test_overlapping_windows_cover_every_token_and_end_at_the_end(stride):
    frame, length = Frame(1, 1), 60
    text = text_positions(frame, length, windows(length, 16, frame, LongText("windows", stride=stride)))
    assert sorted({i for window in text for i in window}) == list(range(1, length - 1))
    assert [w[0] for w in text] == list(range(1, 1 + stride * len(text), stride)) and text[-1][-1] == length - 2
    assert text[-2][-1] < length - 2  # no window more than needed


def test_a_text_that_fits_is_its_encoding_whatever_the_option():
    for long_text in (WINDOWS, HEAD_TAIL, TRUNCATE):
        assert windows(16, 16, Frame(1, 1), long_text) == [list(range(16))]


def test_head_tail_keeps_exactly_the_first_and_last_tokens_asked_for():
    frame, length = Frame(1, 1), 100  # text tokens at positions 1..98
    (piece,) = windows(length, 12, frame, LongText("head-tail", head=3))
    assert piece == [0, 1, 2, 3, *range(92, 99), 99]  # [CLS], the first 3, the last 12 - 2 - 3 = 7, [SEP]
    (piece,) = windows(2000, 512, frame, HEAD_TAIL)  # Sun et al.: 128 + 382 of 512
    assert piece[1:129] == list(range(1, 129)) and piece[129:-1] == list(range(2000 - 1 - 382, 1999))
    (piece,) = windows(length, 12, Frame(0, 0), LongText("head-tail", head=0))  # the tail alone
    assert piece == list(range(88, 100))
    (piece,) = windows(length, 12, frame, TRUNCATE)
    assert piece == [*range(11), 99]  # the first tokens that fit, the closing token kept


def test_parse_and_print_round_trip_and_bad_options():
    for text in ("truncate", "windows", "windows:stride=64", "head-tail", "head-tail:head=100"):
        assert str(LongText.parse(text)) == text
    assert LongText.parse(None) == TRUNCATE and LongText.parse("windows:stride=8").stride == 8
    for bad, fragment in [("window", "expected one of truncate, head-tail, windows"),
                          ("windows:head=3", "windows takes stride=N"), ("windows:stride=0", "stride=N"),
                          ("truncate:stride=3", "truncate takes no options"), ("head-tail:head=-1", "head=N")]:
        with pytest.raises(UserError, match=fragment):
            LongText.parse(bad)
    with pytest.raises(UserError, match="no room for text"):
        windows(10, 2, Frame(1, 1), WINDOWS)


def test_frames_are_found_by_encoding(corpus_dir):
    bert, gpt2 = tiny_tokenizer("bert", corpus_dir), tiny_tokenizer("gpt2", corpus_dir)
    gpt2.add_task_tokens()
    assert Frame.of(bert) == Frame.of(gpt2) == Frame(1, 1)
    assert Frame.of(tiny_tokenizer("elmo", corpus_dir)) == Frame(1, 1)
    assert Frame.of(WordTokenizer.train([corpus_dir / "train.txt"])) == Frame(0, 0)


def test_concat_pooling_is_last_max_mean_of_the_real_tokens():
    states = torch.randn(2, 5, 3)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    got = pool(states, mask, "concat")
    for row, n in enumerate((5, 3)):
        real = states[row, :n]
        torch.testing.assert_close(got[row], torch.cat([real[-1], real.max(0).values, real.mean(0)]))


def batch_of_windows(seed: int = 0):
    """Five windows of three texts (2 + 1 + 2 windows), right-padded."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [6, 3, 4, 6, 2]
    states = torch.randn(5, 6, 4, generator=generator, dtype=torch.float64)
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    return states, mask, torch.tensor([0, 0, 1, 2, 2]), lengths


def test_a_long_texts_windowed_mean_is_the_token_weighted_mean_of_its_windows():
    states, mask, text, lengths = batch_of_windows()
    got = pool_windows(states, mask, text, "mean")
    means = [states[i, :n].mean(0) for i, n in enumerate(lengths)]
    for t, members in enumerate([[0, 1], [2], [3, 4]]):
        expected = sum(means[i] * lengths[i] for i in members) / sum(lengths[i] for i in members)
        torch.testing.assert_close(got[t], expected)
        flat = torch.cat([states[i, :lengths[i]] for i in members])
        torch.testing.assert_close(got[t], flat.mean(0))  # the same: every token of every window once
    assert torch.equal(got[1], pool(states, mask, "mean")[2])  # a text of one window: its vector, bit for bit


def test_windowed_last_and_concat_read_the_whole_text():
    states, mask, text, lengths = batch_of_windows(1)
    last = pool_windows(states, mask, text, "last")
    torch.testing.assert_close(last[0], states[1, lengths[1] - 1])  # the last window's last token
    torch.testing.assert_close(last[2], states[4, lengths[4] - 1])
    concat = pool_windows(states, mask, text, "concat")
    for t, members in enumerate([[0, 1], [2], [3, 4]]):
        tokens = torch.cat([states[i, :lengths[i]] for i in members])
        expected = torch.cat([tokens[-1], tokens.max(0).values, tokens.mean(0)])
        torch.testing.assert_close(concat[t], expected)
    cls = pool_windows(states, mask, text, "cls")
    torch.testing.assert_close(cls[0], (states[0, 0] * 6 + states[1, 0] * 3) / 9)


def test_one_window_per_text_is_the_plain_pooling_and_every_window_gets_a_gradient():
    states, mask, _, _ = batch_of_windows()
    for how in ("cls", "mean", "last", "concat"):
        assert torch.equal(pool_windows(states, mask, torch.arange(5), how), pool(states, mask, how))
    states, mask, text, lengths = batch_of_windows()
    states.requires_grad_(True)
    for how in ("mean", "concat"):
        pool_windows(states, mask, text, how).sum().backward()
        assert all(states.grad[i, :n].abs().sum() > 0 for i, n in enumerate(lengths))
        states.grad = None
    vectors = torch.randn(3, 6)
    assert torch.equal(combine_windows(vectors, torch.tensor([4, 2, 7]), torch.tensor([0, 1, 2]), "mean"), vectors)
