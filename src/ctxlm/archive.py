"""Extracting a published model's archive (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz, .zip) without letting it
write outside its target folder.

Every member is checked before anything is written, and a `UserError` naming the member refuses the whole
archive when one has an absolute path, a `..` component, is a symbolic or hard link leading outside the target,
or is a device file, FIFO or socket. Tar members are then extracted through tarfile's "data" filter (which
also re-checks links against the files already extracted, drops setuid/setgid bits and ownership); zip members
are written by hand, as regular files only, never through an existing link.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from ctxlm.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")


def is_archive(path: str | Path) -> bool:
    """A file whose name ends like a tar or zip archive's."""
    path = Path(path)
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: str | Path, target: str | Path) -> Path:
    """Extract `archive` into the folder `target` (created if missing) and return `target`.

    Refuses (`UserError` naming the member, before writing anything) members that would land or point outside
    `target`: absolute paths, `..` components, links leading outside, device files. A refused or corrupt
    archive may leave part of its content in `target`: extract into a fresh folder and remove it on error.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise UserError(f"{archive}: no such archive")
    target.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(target)
    try:
        name = archive.name.lower()
        if name.endswith(".zip") or (not name.endswith(ARCHIVE_SUFFIXES) and zipfile.is_zipfile(archive)):
            _extract_zip(archive, root)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, root)
        else:
            raise UserError(f"{archive}: not a tar or zip archive (or truncated)")
    except (tarfile.ReadError, tarfile.CompressionError, zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{archive}: truncated or corrupt archive ({err})") from None
    return target


def _refuse(archive: Path, name: str, why: str) -> UserError:
    return UserError(f"{archive}: member {name!r} {why}; refusing to extract the archive")


def _absolute(name: str) -> bool:
    return name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha())


def _parts(archive: Path, name: str) -> list[str]:
    """The components of a member's path, after refusing absolute paths and `..` (either slash separates)."""
    if not name or "\x00" in name:
        raise _refuse(archive, name, "has an empty or invalid name")
    norm = name.replace("\\", "/")
    if _absolute(norm):
        raise _refuse(archive, name, "has an absolute path (it would be written outside the target folder)")
    parts = [part for part in norm.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, name, "has a '..' component (it would be written outside the target folder)")
    return parts


def _inside(root: str, path: str) -> bool:
    """`path`, with every link in it resolved, is `root` or below it."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _check_link(archive: Path, name: str, parts: list[str], link: str, kind: str) -> None:
    """Refuse a link whose target leads outside the archive's folder (judged on the names, before extraction)."""
    norm = link.replace("\\", "/")
    if kind == "hard link":  # relative to the archive's root
        where = posixpath.normpath(norm) if norm else ""
    else:  # relative to the link's own folder
        where = posixpath.normpath(posixpath.join(*parts[:-1], norm)) if parts[:-1] else posixpath.normpath(norm)
    if not norm or _absolute(norm) or where == ".." or where.startswith("../"):
        raise _refuse(archive, name, f"is a {kind} to {link!r}, outside the target folder")


# -- tar --------------------------------------------------------------------------------------------------------
def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    parts = _parts(archive, member.name)
    if member.issym():
        _check_link(archive, member.name, parts, member.linkname, "symbolic link")
    elif member.islnk():
        _check_link(archive, member.name, parts, member.linkname, "hard link")
    elif member.ischr() or member.isblk():
        raise _refuse(archive, member.name, "is a device file")
    elif member.isfifo():
        raise _refuse(archive, member.name, "is a FIFO")
    elif not (member.isreg() or member.isdir()):
        raise _refuse(archive, member.name, f"is a special file (tar type {member.type!r})")


def _extract_tar(archive: Path, root: str) -> None:
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # Python < 3.11.4
        raise UserError(f"{archive}: extracting a tar archive safely needs Python 3.11.4 or later (tarfile's data "
                        "filter); extract it yourself, check it, and pass the folder")

    def checked(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        # At extraction time, with the earlier members on disk: nothing may go through a link to outside.
        _check_tar_member(archive, member)
        full = os.path.join(dest, *_parts(archive, member.name))
        if not _inside(root, os.path.dirname(full)):
            raise _refuse(archive, member.name, "would be written through a link to outside the target folder")
        if member.issym() and not _inside(root, os.path.join(os.path.dirname(full), member.linkname)):
            raise _refuse(archive, member.name, f"is a symbolic link to {member.linkname!r}, outside the target "
                                                "folder")
        return data_filter(member, dest)

    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:  # the whole archive is judged before anything is written
            _check_tar_member(archive, member)
        try:
            tar.extractall(root, members=members, filter=checked)
        except tarfile.FilterError as err:
            member = getattr(err, "tarinfo", None)
            raise _refuse(archive, member.name if member else "?", f"was refused ({err})") from None


# -- zip --------------------------------------------------------------------------------------------------------
def _zip_kind(info: zipfile.ZipInfo) -> int:
    """The file type of a member (stat.S_IFMT of its Unix mode), 0 when the archive does not record one."""
    return stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0


def _check_zip_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> list[str]:
    parts = _parts(archive, info.filename)
    kind = _zip_kind(info)
    if kind == stat.S_IFLNK:
        link = zf.read(info).decode("utf-8", "replace") if info.file_size < 4096 else "?"
        _check_link(archive, info.filename, parts, link, "symbolic link")
        raise _refuse(archive, info.filename, f"is a symbolic link to {link!r} (links in zip archives are not "
                                              "extracted: archive the files themselves)")
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        raise _refuse(archive, info.filename, "is a device file")
    if kind in (stat.S_IFIFO, stat.S_IFSOCK):
        raise _refuse(archive, info.filename, "is a FIFO or socket")
    return parts


def _extract_zip(archive: Path, root: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = [(info, _check_zip_member(archive, zf, info)) for info in zf.infolist()]
        for info, parts in infos:
            if not parts:
                continue  # the root itself
            dest = os.path.join(root, *parts)
            if not _inside(root, os.path.dirname(dest)) or os.path.islink(dest):
                raise _refuse(archive, info.filename, "would be written through a link to outside the target folder")
            if info.is_dir():
                os.makedirs(dest, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            fd = os.open(dest, flags, 0o644)
            with zf.open(info) as src, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
