"""Checkpoint write faults: a save that fails, runs out of disk or is killed at any point leaves the last good
checkpoint loadable, and the next save cleans up after it."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save as serialize

from ctxlm.checkpoint import atomic, is_checkpoint, load_checkpoint, recover, resolve, save
from ctxlm.checkpoint import folder as model_folder
from ctxlm.errors import UserError
from helpers import assert_user_error, run_cli, tiny, train_tiny


def assert_same_weights(a, b):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def partial_writer(error: BaseException):
    """A stand-in for safetensors' save_file that writes half the file, then fails with `error`."""

    def write(tensors, filename, metadata=None):
        data = serialize(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        raise error

    return write


def test_a_write_failing_midway_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    good = tiny(seed=0)
    path = save(good, tmp_path / "ckpt")
    monkeypatch.setattr(model_folder, "save_file", partial_writer(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError, match="Input/output"):
        save(tiny(seed=1), path)
    assert_same_weights(load_checkpoint(path), good)
    assert leftovers(path) == []  # the partial temporary folder is removed


@pytest.mark.parametrize("error", [
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors'
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["safetensors", "oserror"])
def test_disk_full_is_a_user_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    good = tiny(seed=0)
    path = save(good, tmp_path / "ckpt")
    monkeypatch.setattr(model_folder, "save_file", partial_writer(error))
    with pytest.raises(UserError) as info:
        save(tiny(seed=1), path)
    assert str(info.value) == (f"no space left on device while writing checkpoint {path}; the previous checkpoint "
                               f"at {path} is intact; free space and save again")
    assert_same_weights(load_checkpoint(path), good)
    assert leftovers(path) == []  # the partial new files are removed, which frees their space


def test_disk_full_in_the_first_save_says_nothing_was_written(tmp_path, monkeypatch):
    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="nothing was written there; free space and try again"):
        save(tiny(seed=0), tmp_path / "ckpt", extra=full)
    assert not (tmp_path / "ckpt").exists() and leftovers(tmp_path / "ckpt") == []


def test_disk_full_during_training_says_resume_and_the_resume_matches(tmp_path, monkeypatch):
    reference, _ = train_tiny(tmp_path / "a")
    real, calls = model_folder.save_file, []

    def fills_up_at_the_second_checkpoint(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            return partial_writer(OSError(errno.ENOSPC, "No space left on device"))(tensors, filename, metadata)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(model_folder, "save_file", fills_up_at_the_second_checkpoint)
    folder = tmp_path / "b" / "checkpoint"
    with pytest.raises(UserError) as info:
        train_tiny(tmp_path / "b")
    assert str(info.value) == (f"no space left on device while writing checkpoint {folder}; the previous "
                               f"checkpoint at {folder} is intact; free space and resume with --resume")
    monkeypatch.setattr(model_folder, "save_file", real)
    resumed, _ = train_tiny(tmp_path / "b", resume=True)  # from step 4, the checkpoint before the full disk
    assert_same_weights(resumed, reference)


def test_the_cli_prints_a_full_disk_as_one_line_and_exits_1(tmp_path, monkeypatch, capsys, tiny_model_dir):
    out = save(tiny(seed=0), tmp_path / "out")
    monkeypatch.setattr(model_folder, "save_file", partial_writer(OSError(errno.ENOSPC, "No space left on device")))
    result = run_cli(monkeypatch, capsys, "convert", tiny_model_dir, out)
    assert_user_error(result, f"no space left on device while writing checkpoint {out}; the previous checkpoint "
                              f"at {out} is intact")


# -- killed in the middle of a save -------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    import torch
    from safetensors.torch import save as serialize

    import ctxlm.checkpoint as checkpoint
    from ctxlm.checkpoint import atomic
    from ctxlm.checkpoint import folder as model_folder
    from ctxlm.config import GPTConfig
    from ctxlm.models.gpt import GPTLanguageModel

    path, when = Path(sys.argv[1]), sys.argv[2]

    def ready():  # tell the parent, then wait for its SIGKILL
        print("ready", flush=True)
        time.sleep(600)

    if when == "mid-write":
        def save_file(tensors, filename, metadata=None):
            data = serialize(tensors, metadata=metadata)
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                ready()
        model_folder.save_file = save_file
    elif when == "before-rename":
        swap_in = atomic._swap_in
        def before(tmp, target):
            ready()
            swap_in(tmp, target)
        atomic._swap_in = before
    else:  # "between-renames", without an atomic exchange: after `path` became `.path.old`, before `tmp` is `path`
        atomic._exchange = lambda a, b: False
        replace = os.replace
        def between(src, dst):
            replace(src, dst)
            if Path(src) == path:
                ready()
        os.replace = between
    torch.manual_seed(1)
    config = GPTConfig(vocab_size=4000, max_positions=16, dim=256, n_layers=4, n_heads=2)
    checkpoint.save(GPTLanguageModel(config), path)  # about 4M parameters: 17 MB of weights
    print("finished", flush=True)
""")


@pytest.mark.parametrize("when", ["mid-write", "before-rename", "between-renames"])
def test_a_save_killed_at_any_point_leaves_the_last_good_checkpoint(tmp_path, when):
    good = tiny(seed=0, dim=256, n_layers=4, vocab_size=4000)
    path = save(good, tmp_path / "ckpt")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), when], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    line = ""
    try:
        line = child.stdout.readline()
        if line == "ready\n":
            os.kill(child.pid, signal.SIGKILL)  # in the middle of the save
    finally:
        if child.poll() is None:
            child.kill()
        _, err = child.communicate(timeout=60)
    assert line == "ready\n", err
    assert child.returncode == -signal.SIGKILL
    stale = [name for name in leftovers(path) if ".tmp." in name]
    assert len(stale) == 1, leftovers(path)  # the killed save's temporary folder, which loading ignores
    if when == "between-renames":
        assert not path.exists() and is_checkpoint(tmp_path / ".ckpt.old")
        assert resolve(path) == tmp_path / ".ckpt.old"
    else:
        assert is_checkpoint(path) and resolve(path) == path
    assert_same_weights(load_checkpoint(path), good)

    newer = tiny(seed=2, dim=256, n_layers=4, vocab_size=4000)
    save(newer, path)  # puts .ckpt.old back first, then replaces it; removes the dead process's temporary folder
    assert_same_weights(load_checkpoint(path), newer)
    assert leftovers(path) == []


def test_a_crash_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    """Where no atomic exchange exists, `save` renames the old folder away, then the new one in: a crash between
    leaves no folder. Readers use .NAME.old meanwhile; the writer (`recover`, the next save) puts it back."""
    good = tiny(seed=0)
    path = save(good, tmp_path / "ckpt")
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)

    class Crash(BaseException):
        pass

    real = os.replace

    def crash_after_the_first_rename(src, dst):
        real(src, dst)
        if Path(src) == path:
            raise Crash

    monkeypatch.setattr(os, "replace", crash_after_the_first_rename)
    with pytest.raises(Crash):
        save(tiny(seed=1), path)
    monkeypatch.setattr(os, "replace", real)
    assert not path.exists()
    assert_same_weights(load_checkpoint(path), good)  # from .ckpt.old, renaming nothing
    assert not path.exists()
    assert recover(path) == path and is_checkpoint(path) and leftovers(path) == []
    assert_same_weights(load_checkpoint(path), good)


def test_a_reader_during_the_window_falls_back_then_follows_the_finished_save(tmp_path, monkeypatch):
    """If the save finishes (and removes .NAME.old) while a reader is on its fallback, the reader retries."""
    path = save(tiny(seed=0), tmp_path / "ckpt")
    newer = tiny(seed=1)
    os.replace(path, tmp_path / ".ckpt.old")
    real = model_folder._load_folder

    def finish_the_save_first(folder, device):
        if folder.name == ".ckpt.old":
            save(newer, path)
        return real(folder, device)

    monkeypatch.setattr(model_folder, "_load_folder", finish_the_save_first)
    assert_same_weights(load_checkpoint(path), newer)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2(RENAME_EXCHANGE) is Linux's")
def test_on_linux_the_folder_is_replaced_by_one_atomic_exchange(tmp_path, monkeypatch):
    path = save(tiny(seed=0), tmp_path / "ckpt")
    renames = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), real(src, dst))[1])
    newer = tiny(seed=1)
    save(newer, path)
    assert renames == []  # no moment without a folder at `path`
    assert_same_weights(load_checkpoint(path), newer)
    assert leftovers(path) == []


def test_stale_temporary_folders_are_ignored_then_removed_if_their_process_is_gone(tmp_path):
    path = save(tiny(seed=0), tmp_path / "ckpt")
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    host = atomic._host()
    names = {"dead": f".ckpt.tmp.{host}.{dead}.abc", "alive": f".ckpt.tmp.{host}.{os.getppid()}.abc",
             "elsewhere": f".ckpt.tmp.otherhost.{dead}.abc", "legacy": ".ckpt.x1y2z3",
             "other": f".ckpt.tmp.foo.tmp.{host}.{dead}.abc"}  # a temporary folder of a sibling "ckpt.tmp.foo"
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"garbage")
    assert_same_weights(load_checkpoint(path), tiny(seed=0))  # loading looks at `path` alone
    save(tiny(seed=1), path)
    kept = set(leftovers(path))
    assert names["dead"] not in kept
    assert kept == {names[k] for k in ("alive", "elsewhere", "legacy", "other")}


def test_save_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a ctxlm checkpoint.*refusing to replace it"):
        save(tiny(seed=0), folder)
    assert (folder / "thesis.tex").read_text() == "years of work" and leftovers(folder) == []
    (tmp_path / "empty").mkdir()
    save(tiny(seed=0), tmp_path / "empty")  # an empty folder is fine
    assert is_checkpoint(tmp_path / "empty")
