"""Loading never runs code and never trusts a file's claims: pickles posing as checkpoints are refused unopened,
safetensors headers are checked before any tensor is allocated, and archives cannot write outside their folder."""

import io
import json
import os
import pickle
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ctxlm
from ctxlm.archive import extract
from ctxlm.checkpoint import load_checkpoint, read_safetensors_header, safetensors_checks
from ctxlm.errors import UserError
from helpers import tiny


@pytest.fixture
def folder(tmp_path) -> Path:
    return tiny("gpt2", save_to=tmp_path / "model")


# -- pickles ----------------------------------------------------------------------------------------------------
class Exploit:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def malicious(marker: Path, form: str) -> bytes:
    payload = {"transformer.wte.weight": torch.zeros(2, 2), "evil": Exploit(marker)}
    if form == "pickle":
        return pickle.dumps(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # the zip of pickles that pytorch_model.bin files are
    return buffer.getvalue()


@pytest.fixture(params=["pickle", "torch.save"])
def exploit(request, tmp_path) -> tuple[bytes, Path]:
    """A malicious file and the marker that shows its code ran, after checking that it does run when unpickled."""
    control = tmp_path / "control-marker"
    data = malicious(control, request.param)
    if request.param == "pickle":
        pickle.loads(data)  # noqa: S301 - the control: this payload is live
    else:
        torch.load(io.BytesIO(data), weights_only=False)  # noqa: S614
    assert control.read_text() == "code ran"
    marker = tmp_path / "marker"
    return malicious(marker, request.param), marker


def test_a_pickle_posing_as_model_safetensors_is_refused_never_run(folder, exploit):
    data, marker = exploit
    (folder / "model.safetensors").write_bytes(data)
    for load in (ctxlm.load, load_checkpoint):
        with pytest.raises(UserError) as info:
            load(folder)
        message = str(info.value)
        assert message.startswith(f"{folder / 'model.safetensors'}: ")
        assert "not a safetensors file: ctxlm will not unpickle it" in message
        assert "torch.load(FILE, weights_only=True)" in message  # how to convert safely
        assert "\n" not in message
    assert not marker.exists()


def hub_folder(path: Path) -> Path:
    """A folder in the Hugging Face GPT-2 layout (its config alone: the weights file is the test's)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                  "n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 64,
                                                  "n_positions": 16}))
    return path


def test_a_malicious_pytorch_model_bin_is_refused_by_weights_only(tmp_path, exploit):
    data, marker = exploit
    hub = hub_folder(tmp_path / "hub")
    (hub / "pytorch_model.bin").write_bytes(data)
    for attempt in (lambda: ctxlm.load(hub), lambda: ctxlm.convert(hub, tmp_path / "out")):
        with pytest.raises(UserError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(f"{hub / 'pytorch_model.bin'}: refused: this pickle holds more than tensors")
        assert "ctxlm will not execute it" in message and "model.safetensors" in message
        assert "weights_only` set to `False`" not in message and "\n" not in message  # not torch's advice
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_pickle_posing_as_a_hub_model_safetensors_is_refused(tmp_path, exploit):
    data, marker = exploit
    hub = hub_folder(tmp_path / "hub")
    (hub / "model.safetensors").write_bytes(data)
    with pytest.raises(UserError, match="not a safetensors file: ctxlm will not unpickle it"):
        ctxlm.convert(hub, tmp_path / "out")
    assert not marker.exists()


# -- safetensors headers ----------------------------------------------------------------------------------------
def split(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write(file: Path, header, data: bytes) -> None:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    text += b" " * (-len(text) % 8)
    file.write_bytes(len(text).to_bytes(8, "little") + text + data)


def edit_entry(name_of: str, **changes):
    def edit(file: Path) -> str:
        header, data = split(file)
        names = sorted(k for k in header if k != "__metadata__")
        name = names[0] if name_of == "first" else max(names, key=lambda k: header[k]["data_offsets"][1])
        header[name] |= {k: v(header[name][k]) if callable(v) else v for k, v in changes.items()}
        write(file, header, data)
        return name

    return edit


def overlap(file: Path) -> str:
    header, data = split(file)
    by_size = {}
    for name, info in sorted(header.items()):
        if name != "__metadata__":
            size = info["data_offsets"][1] - info["data_offsets"][0]
            if size in by_size:
                info["data_offsets"] = header[by_size[size]]["data_offsets"]
                write(file, header, data)
                return name
            by_size[size] = name
    raise AssertionError("no two tensors of one size")


def raw(data: bytes):
    def edit(file: Path) -> None:
        file.write_bytes(data)

    return edit


def header_length(length_of):
    def edit(file: Path) -> None:
        raw_bytes = file.read_bytes()
        file.write_bytes(length_of(len(raw_bytes)).to_bytes(8, "little") + raw_bytes[8:])

    return edit


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-100])


def truncate_to_last_tensor(file: Path) -> str:
    header, _ = split(file)
    truncate(file)
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


MALFORMED = {
    "empty file": (raw(b""), "truncated, 0 bytes"),
    "shorter than its length field": (raw(b"\x10\x00\x00"), "truncated, 3 bytes"),
    "truncated": (truncate_to_last_tensor, r"its data_offsets \[\d+, \d+\] lie beyond the end of the file"),
    "header length larger than the file": (header_length(lambda size: size), r"header length field says \d+ bytes, "
                                                                              r"the whole file has \d+"),
    "header length over the cap": (header_length(lambda size: 2**40), "more than 100000000"),
    "header not JSON": (lambda f: write(f, b'{"a": [1, 2', b""), "corrupt safetensors header \\(not JSON"),
    "header a JSON list": (lambda f: write(f, [1, 2], b""), "a JSON list, not an object"),
    "offsets beyond the end": (edit_entry("first", data_offsets=lambda o: [o[0] + 10**9, o[1] + 10**9]),
                               "lie beyond the end of the file"),
    "offsets that do not match shape x dtype": (edit_entry("first", shape=lambda s: [s[0] + 1, *s[1:]]),
                                                r"needs \d+ bytes, its data_offsets span \d+"),
    "huge claimed shape": (edit_entry("first", shape=[2**40, 2**40]), r"shape \(1099511627776, 1099511627776\) "
                                                                      r"of F32 needs \d+ bytes"),
    "huge shape and offsets": (edit_entry("last", shape=[2**40, 2**40], data_offsets=lambda o: [o[0], o[0] + 2**82]),
                               "lie beyond the end of the file"),
    "unknown dtype": (edit_entry("first", dtype="Q7"), "unknown dtype 'Q7'"),
    "negative dimension": (edit_entry("first", shape=[-1]), "corrupt shape"),
    "overlapping tensors": (overlap, "overlap another tensor"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_safetensors_file_is_refused_before_any_tensor_is_read(folder, monkeypatch, case):
    corrupt, expected = MALFORMED[case]
    weights = folder / "model.safetensors"
    tensor = corrupt(weights)

    def never(*args, **kwargs):
        raise AssertionError("safe_open reached: tensors would be read from an unchecked file")

    monkeypatch.setattr(safetensors_checks, "safe_open", never)
    with pytest.raises(UserError, match=expected) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert message.startswith(f"{weights}: ") and "\n" not in message
    if tensor is not None:
        assert f"tensor {tensor!r}" in message


def test_a_tensor_of_another_dtype_is_refused_naming_it(folder, monkeypatch):
    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].to(torch.int64)
    save_file(weights, folder / "model.safetensors")
    monkeypatch.setattr(safetensors_checks, "safe_open", lambda *a, **k: pytest.fail("read before the dtype check"))
    with pytest.raises(UserError) as info:
        load_checkpoint(folder)
    assert str(info.value) == (f"{folder / 'model.safetensors'}: tensor {name!r} is int64 in the file, the model "
                               "expects float32 (only floating-point precisions convert)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_into_an_fp32_model_by_a_cast(folder, dtype):
    original = load_file(folder / "model.safetensors")
    save_file({k: v.to(dtype) for k, v in original.items()}, folder / "model.safetensors")
    assert {dtype for dtype, _ in read_safetensors_header(folder / "model.safetensors").values()} == {dtype}
    model = load_checkpoint(folder)
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, original[name].to(dtype).float(), atol=0, rtol=0)


# -- archives ---------------------------------------------------------------------------------------------------
def tar_member(name: str, data: bytes = b"x", *, kind=tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    return info, data if kind == tarfile.REGTYPE else None


def make_tar(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def make_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, mode << 16
            zf.writestr(info, data)
    return path


def everything(root: Path, but: Path) -> set[str]:
    """Every path under `root` (links not followed), outside the folder `but`."""
    found = set()
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base, name)
            if path != but and but not in path.parents:
                found.add(str(path))
    return found


EVIL_TARS = {
    "dotdot": ([tar_member("../evil")], "'../evil'", "'..' component"),
    "nested dotdot": ([tar_member("model/config.json"), tar_member("model/../../evil")], "'model/../../evil'",
                      "'..' component"),
    "absolute": ([tar_member("{tmp}/absolute-evil")], "absolute-evil'", "absolute path"),
    "symlink to /etc": ([tar_member("etc", kind=tarfile.SYMTYPE, link="/etc")], "'etc'", "symbolic link to '/etc'"),
    "write through a symlink": ([tar_member("up", kind=tarfile.SYMTYPE, link=".."), tar_member("up/evil")], "'up'",
                                "symbolic link to '..'"),
    "symlink chain": ([tar_member("a", kind=tarfile.SYMTYPE, link="."), tar_member("a/b", kind=tarfile.SYMTYPE,
                                                                                    link=".."),
                       tar_member("a/b/evil")], "'a/b'", "outside the target folder"),
    "hard link": ([tar_member("passwd", kind=tarfile.LNKTYPE, link="../../etc/passwd")], "'passwd'",
                  "hard link to '../../etc/passwd'"),
    "device file": ([tar_member("null", kind=tarfile.CHRTYPE)], "'null'", "device file"),
    "fifo": ([tar_member("pipe", kind=tarfile.FIFOTYPE)], "'pipe'", "FIFO"),
}


@pytest.mark.parametrize("case", EVIL_TARS, ids=list(EVIL_TARS))
def test_a_tar_that_would_write_outside_its_folder_is_refused(tmp_path, case):
    members, member, why = EVIL_TARS[case]
    for info, _ in members:
        info.name = info.name.replace("{tmp}", str(tmp_path))
    target = assert_refused(tmp_path, make_tar(tmp_path / "evil.tar.gz", members), member, why)
    if case != "symlink chain":  # refused from the names alone, before writing anything
        assert list(target.iterdir()) == []


def assert_refused(tmp_path, archive, member: str, why: str):
    """Extracting `archive` raises a UserError naming `member` and `why`, and writes nothing outside the target
    folder, which it returns."""
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    before = everything(tmp_path, target)
    with pytest.raises(UserError) as info:
        extract(archive, target)
    message = str(info.value)
    assert message.startswith(f"{archive}: member ") and member in message and why in message, message
    assert everything(tmp_path, target) == before  # nothing written outside the target
    return target


EVIL_ZIPS = {
    "dotdot": ([("../evil", b"x", 0o100644)], "'../evil'", "'..' component"),
    "backslash dotdot": ([("..\\evil", b"x", 0o100644)], "'..\\\\evil'", "'..' component"),
    "nested dotdot": ([("model/../../evil", b"x", 0o100644)], "'model/../../evil'", "'..' component"),
    "absolute": ([("/tmp/ctxlm-absolute-evil", b"x", 0o100644)], "absolute-evil'", "absolute path"),
    "symlink out": ([("etc", b"/etc", stat.S_IFLNK | 0o777)], "'etc'", "symbolic link to '/etc', outside"),
    "symlink in": ([("link", b"config.json", stat.S_IFLNK | 0o777)], "'link'", "links in zip archives are not"),
    "device file": ([("null", b"", stat.S_IFCHR | 0o644)], "'null'", "device file"),
}


@pytest.mark.parametrize("case", EVIL_ZIPS, ids=list(EVIL_ZIPS))
def test_a_zip_that_would_write_outside_its_folder_is_refused(tmp_path, case):
    members, member, why = EVIL_ZIPS[case]
    archive = make_zip(tmp_path / "evil.zip", [("model/config.json", b"{}", 0o100644), *members])
    assert list(assert_refused(tmp_path, archive, member, why).iterdir()) == []
    assert not Path("/tmp/ctxlm-absolute-evil").exists()


def test_links_inside_the_folder_are_kept(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", [tar_member("blobs/abc", b"weights"),
                                                tar_member("model.bin", kind=tarfile.SYMTYPE, link="blobs/abc"),
                                                tar_member("copy.bin", kind=tarfile.LNKTYPE, link="blobs/abc")])
    target = extract(archive, tmp_path / "out")
    assert (target / "model.bin").is_symlink() and (target / "model.bin").read_bytes() == b"weights"
    assert (target / "copy.bin").read_bytes() == b"weights"


def archive_of(folder: Path, archive: Path, *, top: str | None) -> Path:
    """`folder`'s files in a .tar/.tar.gz/.tgz/.zip, under a top-level folder `top` or at the root."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for file in sorted(folder.iterdir()):
                zf.write(file, f"{top}/{file.name}" if top else file.name)
    else:
        with tarfile.open(archive, "w:gz" if archive.name.endswith(("gz", "tgz")) else "w") as tar:
            for file in sorted(folder.iterdir()):
                tar.add(file, f"{top}/{file.name}" if top else file.name)
    return archive


@pytest.mark.parametrize("name,top", [("model.tar.gz", "tiny"), ("model.tgz", None), ("model.tar", "tiny"),
                                      ("model.zip", None), ("model.zip", "tiny")])
def test_an_archived_checkpoint_converts_and_its_extraction_is_removed(tmp_path, tiny_model_dir, name, top):
    archive = archive_of(tiny_model_dir, tmp_path / name, top=top)
    out = ctxlm.convert(archive, tmp_path / "out" / "native")
    model, expected = ctxlm.load(out), ctxlm.load(tiny_model_dir)
    for (key, p), q in zip(model.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.equal(p, q), key
    assert model.tokenizer.encode("the cat sees") == expected.tokenizer.encode("the cat sees")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["native"]  # no extraction folder left


def test_converting_a_malicious_archive_writes_nothing(tmp_path, tiny_model_dir):
    archive = archive_of(tiny_model_dir, tmp_path / "model.tar.gz", top="tiny")
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    evil = make_tar(tmp_path / "evil.tar.gz", [*members, tar_member("tiny/../../escaped")])
    with pytest.raises(UserError, match=r"member 'tiny/\.\./\.\./escaped' has a '\.\.' component"):
        ctxlm.convert(evil, tmp_path / "out" / "native")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "escaped").exists()


def test_an_archive_without_one_model_folder_is_a_clear_error(tmp_path, tiny_model_dir):
    two = tmp_path / "two"
    shutil.copytree(tiny_model_dir, two / "a")
    shutil.copytree(tiny_model_dir, two / "b")
    with tarfile.open(tmp_path / "two.tar.gz", "w:gz") as tar:
        tar.add(two / "a", "a")
        tar.add(two / "b", "b")
    with pytest.raises(UserError, match="holds no model folder at its root nor as its single top-level folder"):
        ctxlm.convert(tmp_path / "two.tar.gz", tmp_path / "out")


def test_a_truncated_archive_or_another_file_is_a_clear_error(tmp_path, tiny_model_dir):
    archive = archive_of(tiny_model_dir, tmp_path / "model.tar.gz", top="tiny")
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(UserError, match="model.tar.gz: truncated or corrupt archive"):
        ctxlm.convert(archive, tmp_path / "out")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="notes.txt: a file; expected a model folder, or an archive"):
        ctxlm.convert(tmp_path / "notes.txt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
