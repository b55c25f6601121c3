"""Importing Hub-layout GPT / GPT-2 folders, and the native checkpoint round trip."""

import pickle

import pytest
import torch

import ctxlm
from ctxlm.errors import UserError
from helpers import GPT_CONFIGS, gpt_fp32, gpt_reference_pair
from tolerances import assert_fp_close

transformers = pytest.importorskip("transformers")


@pytest.mark.numeric
@pytest.mark.parametrize("spec", [GPT_CONFIGS[0], GPT_CONFIGS[2]], ids=["gpt2", "gpt"])
def test_convert_hub_folder_then_load_gives_reference_logits(tmp_path, spec):
    ref, _ = gpt_reference_pair(*spec)
    ref.save_pretrained(tmp_path / "hub")  # model.safetensors + config.json, as on the Hub
    ctxlm.convert(tmp_path / "hub", tmp_path / "native")
    ids = torch.randint(0, spec[5], (2, 9))
    with torch.no_grad():
        expected = ref(ids).logits
    for model in (ctxlm.load(tmp_path / "native"), ctxlm.load(tmp_path / "hub")):
        with torch.no_grad():
            assert_fp_close(model(ids).logits, expected, **gpt_fp32(*spec))


@pytest.mark.numeric
def test_legacy_bin_loads_with_weights_only_and_refuses_pickled_code(tmp_path):
    ref, _ = gpt_reference_pair(*GPT_CONFIGS[0])
    folder = tmp_path / "legacy"
    ref.save_pretrained(folder, safe_serialization=False)
    if not (folder / "pytorch_model.bin").exists():  # newer transformers always write safetensors
        (folder / "model.safetensors").unlink()
        torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    ids = torch.randint(0, 101, (1, 5))
    with torch.no_grad():
        assert_fp_close(ctxlm.load(folder)(ids).logits, ref(ids).logits, **gpt_fp32(*GPT_CONFIGS[0]))

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": Exploit()}))
    with pytest.raises(UserError, match="pytorch_model.bin"):
        ctxlm.load(folder)


def test_save_load_round_trip_keeps_weights_and_tokenizer(tmp_path, tiny_model_dir):
    model = ctxlm.load(tiny_model_dir)
    again = ctxlm.load(ctxlm.save(model, tmp_path / "copy"))
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert again.tokenizer.encode("the cat sees") == model.tokenizer.encode("the cat sees")
    assert [len(g) for g in again.layer_groups()] == [2, 12, 14]  # embeddings, block 1, block 2 + final norm


def test_shape_mismatch_names_the_tensor(tmp_path, tiny_model_dir):
    import json
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["dim"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"tensor 'backbone\.\S+' has shape"):
        ctxlm.load(folder)


def test_published_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="gpt2"):
        ctxlm.load("gpt2")


@pytest.mark.numeric
@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_convert_an_archived_hub_folder(tmp_path, suffix):
    """A published model.tar.gz (or .zip) holding a Hub-layout folder converts like the folder itself; the
    extraction beside the destination is removed afterwards."""
    import tarfile
    import zipfile

    ref, _ = gpt_reference_pair(*GPT_CONFIGS[0])
    ref.save_pretrained(tmp_path / "gpt2-tiny")
    archive = tmp_path / f"gpt2-tiny{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for file in (tmp_path / "gpt2-tiny").iterdir():
                zf.write(file, f"gpt2-tiny/{file.name}")
    else:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tmp_path / "gpt2-tiny", "gpt2-tiny")
    native = ctxlm.convert(archive, tmp_path / "models" / "native")
    ids = torch.randint(0, GPT_CONFIGS[0][5], (2, 9))
    with torch.no_grad():
        assert_fp_close(ctxlm.load(native)(ids).logits, ref(ids).logits, **gpt_fp32(*GPT_CONFIGS[0]))
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["native"]
