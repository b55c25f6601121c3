"""Atomic folder writes: a folder is replaced by a complete new one, or left as it was, never a mix nor nothing.

Files go to a temporary sibling folder `.NAME.tmp.HOST.PID.RANDOM`, flushed to disk, which then takes the place
of the folder in one atomic exchange (Linux), so that at every moment the folder holds the previous contents or the
new ones. Where the exchange is unavailable the old folder is first renamed to `.NAME.old`; a crash between that
rename and the next leaves no folder, and readers (`resolve`) fall back to `.NAME.old`, which the next write (or
`recover`) puts back. A write killed midway leaves its temporary folder, which the next write on this host removes.

This module knows nothing of what the folder holds: `complete(folder)` says whether a folder is a finished one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

_ACTIVE_TEMPS: set[Path] = set()  # this process's writes under way (their temporary folders are not stale)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_folder(target: str | Path, fill: Callable[[Path], None], *,
                 disk_full: Callable[[int], BaseException] | None = None) -> None:
    """Make `target` a folder holding what `fill(folder)` writes into an empty temporary folder, atomically.

    The files are flushed to disk before the folder replaces `target` (whatever `target` was: the caller checks
    that it may be replaced). Temporary folders that killed writes to `target` on this host left are removed
    first. When the disk or the quota fills (an OSError, or the "(os error N)" of a Rust writer), the exception
    `disk_full(errno)` is raised instead, if given; `target` is then as it was.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    except OSError as err:
        if disk_full is not None and err.errno in DISK_FULL:
            raise disk_full(err.errno) from None
        raise
    _ACTIVE_TEMPS.add(tmp)
    try:
        try:
            fill(tmp)
            _fsync_tree(tmp)  # on disk before the rename makes it the folder (a power cut cannot empty it)
        except Exception as err:
            code = _os_errno(err)
            if disk_full is not None and code in DISK_FULL:
                raise disk_full(code) from None
            raise
        _swap_in(tmp, target)
    finally:
        _ACTIVE_TEMPS.discard(tmp)
        _remove(tmp)  # the partial new folder, or (after an exchange) the previous one


def remove_folder(target: str | Path) -> None:
    """Remove the folder `target` (and a `.NAME.old` left beside it) so that it is whole or gone, never half
    removed: it is first renamed to a temporary sibling, in one atomic rename, which is then deleted. A kill during
    the deletion leaves that temporary folder, which the next write to `target` on this host removes."""
    target = Path(os.path.abspath(target))
    _remove(_old(target))
    if not os.path.lexists(target):
        return
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    os.replace(target, tmp)  # onto the empty folder just made: a name no other write uses
    _fsync_dir(target.parent)
    _remove(tmp)


def recover(path: str | Path, complete: Callable[[Path], bool]) -> Path:
    """For the process that writes `path`: when `path` is missing because a write was interrupted between its two
    renames, put the last complete folder, `.NAME.old`, back. Returns `path`."""
    path = Path(path)
    old = _old(path)
    if not os.path.lexists(path) and complete(old):
        os.replace(old, path)
    return path


def resolve(path: str | Path, complete: Callable[[Path], bool]) -> Path:
    """For readers: `path`, or the last complete folder `.NAME.old` while `path` is missing (a write between its
    two renames, under way or interrupted). Renames nothing, so that a write under way is not disturbed."""
    path = Path(path)
    old = _old(path)
    if not os.path.lexists(path) and complete(old):
        return old
    return path


def _os_errno(err: BaseException) -> int | None:
    """The OS error number behind `err`: an OSError's, or the "(os error N)" that safetensors' and tokenizers'
    Rust writers put in their messages, following the chain of causes."""
    for _ in range(8):
        if err is None:
            return None
        if isinstance(err, OSError) and err.errno:
            return err.errno
        found = re.search(r"os error (\d+)", str(err))
        if found:
            return int(found.group(1))
        err = err.__cause__ or err.__context__
    return None


def _swap_in(tmp: Path, target: Path) -> None:
    """Make `tmp` the folder `target`. After an exchange `tmp` holds the previous folder (for the caller to
    remove); without one, the previous folder passes through `.NAME.old`."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
    elif not _exchange(tmp, target):
        old = _old(target)
        _remove(old)
        os.replace(target, old)
        os.replace(tmp, target)  # a crash right here leaves no `target`: readers fall back to `old`
        _remove(old)
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system or the file system
    cannot, for the caller to fall back on two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc < 2.28, or another C library
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp.{_host()}.{os.getpid()}."


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _remove_stale_temps(target: Path) -> None:
    """Remove the temporary folders that writes to `target` killed on this host left behind (their process is
    gone). Those of other hosts (a shared file system) or of live processes are left alone."""
    prefix = f".{target.name}.tmp."
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix) or entry in _ACTIVE_TEMPS:
            continue
        parts = entry.name[len(prefix):].split(".")
        if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or not _alive(pid):
            _remove(entry)


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, harmless check: never remove
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders
    finally:
        os.close(fd)
