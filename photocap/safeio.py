"""Crash-safe file writes for photos and sidecars.

Every file photocap changes in a user's library goes through :func:`atomic_write`:

1. the new content goes to a hidden temp file in the *same folder*
   (``.photo.jpg.photocap-tmp-XXXX``;
   same folder = same filesystem, so the final rename is atomic; hidden, so photo discovery never
   mistakes a leftover for a photo),
2. the temp file gets the original's permissions (and owner where allowed) and, unless the
   caller asks to touch it, the original's mtime,
3. it is flushed and fsynced, re-read and checked by the caller's ``verify`` callback,
4. ``os.replace`` swaps it over the original in one step, and the folder is fsynced so the
   rename itself survives a power cut.

A crash at any moment therefore leaves either the complete old file or the complete new file,
plus at worst one hidden temp file that :func:`is_temp_file` recognises.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from photocap.errors import FolderNotWritable, WriteError

TEMP_MARKER = ".photocap-tmp-"

# Test-only fault injection: when this environment variable is set, atomic_write kills the
# process with os._exit right before the rename, exactly like a crash or power cut at the worst
# moment. tests/test_safeio.py uses it from a subprocess; nothing else should set it.
CRASH_ENV = "PHOTOCAP_TEST_CRASH_BEFORE_REPLACE"


NAME_MAX = 255  # bytes in one file name on every common file system


def temp_path_for(path: Path) -> Path:
    """A fresh hidden temp name next to ``path``: ``.photo.jpg.photocap-tmp-1a2b3c4d``.

    The photo's name is cut (at a character) so that the temp name stays within NAME_MAX bytes:
    a photo whose name is long (80 Japanese characters are 240 bytes) must still be writable.
    """
    token = secrets.token_hex(4)
    room = NAME_MAX - len(f".{TEMP_MARKER}{token}".encode())
    name = os.fsencode(path.name)[:room].decode("utf-8", "ignore")  # a cut character dropped
    return path.with_name(f".{name}{TEMP_MARKER}{token}")


def is_temp_file(path: Path) -> bool:
    """True for a temp file left behind by an interrupted :func:`atomic_write`."""
    return path.name.startswith(".") and TEMP_MARKER in path.name


def describe_os_error(err: OSError, path: Path) -> str:
    """One line for an OSError, naming the file and the reason without a traceback."""
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path}"
    if err.errno == errno.EROFS:
        return f"read-only filesystem: {path}"
    if err.errno == errno.ENOSPC:
        return f"no space left on device: {path}"
    if err.errno == errno.ENAMETOOLONG and isinstance(err.filename, (str, bytes, os.PathLike)):
        # The name too long is the one the call was given (a sidecar's), not ``path``'s.
        name = Path(os.fsdecode(err.filename))
        return f"file name too long ({len(os.fsencode(name.name))} bytes): {name}"
    reason = err.strerror or type(err).__name__
    return f"{reason}: {path}"


def check_writable(path: Path, *, in_place: bool) -> None:
    """Raise :class:`WriteError` when ``path`` cannot be replaced safely.

    An atomic replace needs a writable folder (for the temp file and the rename). For files the
    user protected themselves (``in_place=True`` and the file is read-only) we refuse too: a
    rename *could* replace a read-only file, but a read-only photo is a user's "don't touch".
    Mode bits are honoured for root too (a NAS or Docker setup runs as root), where
    ``os.access`` alone says yes to everything.
    """
    folder = path.parent
    if not folder.is_dir():
        raise WriteError(f"folder does not exist: {folder}")
    if not _may_write(folder, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_mount(folder) else "folder is not writable"
        raise FolderNotWritable(f"{why}: {folder}")
    if path.is_dir():
        raise WriteError(f"is a folder, not a file: {path}")
    if in_place and path.exists() and not _may_write(path, os.W_OK):
        raise WriteError(f"file is read-only: {path}")


def check_replaceable(path: Path) -> os.stat_result | None:
    """:func:`check_writable` for a file :func:`atomic_write` would replace, and not one with
    several hard links: the rename would give this name a new file and leave the other names
    on the old one, silently two files (in place would not be atomic). Returns the file's
    stat (None: it does not exist yet). Dry runs call it to say what the write would say."""
    check_writable(path, in_place=True)
    try:
        old = path.stat()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise WriteError(describe_os_error(err, path)) from None
    if old.st_nlink > 1:
        raise WriteError(
            f"has {old.st_nlink} hard links (one file under several names); rewriting it "
            f"would split them, so it is left as it is: {path}"
        )
    return old


def _may_write(path: Path, mode: int) -> bool:
    """``os.access``, and the mode bits whoever asks: root (a NAS's or a Docker container's
    photocap) is granted every write by ``os.access``, but a file or folder with no write bit
    for anyone is still its owner's "don't touch"."""
    if not os.access(path, mode):
        return False
    try:
        return bool(path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return True  # gone or unreadable: the write itself says why


def _read_only_mount(folder: Path) -> bool:
    """True when ``folder`` is on a file system mounted read-only (a card, a disc, a share)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False


def read_sized(fh: BinaryIO, size: int, max_bytes: int) -> bytes:
    """The whole of an open file that had ``size`` bytes at stat, or more than ``max_bytes``.

    Sized by the file, not by the cap: ``read(n)`` allocates n bytes up front (2 GiB for every
    photo otherwise, which fails where memory is not overcommitted). A file that grew since its
    stat is read on up to ``max_bytes + 1`` bytes, for the caller to refuse.
    """
    data = fh.read(size + 1)
    if len(data) > size:
        data += fh.read(max_bytes + 1 - len(data))
    return data


def read_capped(path: Path, max_bytes: int, what: str = "file") -> bytes:
    """Read a whole file, refusing folders and anything larger than ``max_bytes``."""
    try:
        st = path.stat()
    except OSError as err:
        raise WriteError(f"cannot read {what}: {describe_os_error(err, path)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise WriteError(f"{what} path is a folder: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise WriteError(f"{what} is not a regular file: {path}")
    if st.st_size > max_bytes:
        raise WriteError(
            f"{what} too large ({st.st_size // (1024 * 1024)} MB > "
            f"{max_bytes // (1024 * 1024)} MB): {path}"
        )
    try:
        with open(path, "rb") as fh:
            data = read_sized(fh, st.st_size, max_bytes)
    except OSError as err:
        raise WriteError(f"cannot read {what}: {describe_os_error(err, path)}") from None
    if len(data) > max_bytes:  # grew between stat and read
        raise WriteError(f"{what} too large: {path}")
    return data


def fsync_dir(folder: Path) -> None:
    """Make a rename/unlink in ``folder`` durable (no-op where folders cannot be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path,
    data: bytes,
    *,
    preserve_mtime: bool = True,
    verify: Callable[[Path], None] | None = None,
) -> None:
    """Replace (or create) ``path`` with ``data`` atomically; see the module docstring.

    ``verify`` is called with the fsynced temp file before the rename; if it raises, the temp
    file is removed and the original is left exactly as it was. Symlinks are followed: the link's
    target is replaced and the link stays a link. A file with several hard links is refused:
    the rename would split its names into two files. Raises :class:`WriteError` with one line on
    any failure; the original is never left half-written.
    """
    target = Path(os.path.realpath(path))
    old = check_replaceable(target)

    tmp = temp_path_for(target)
    try:
        mode = stat.S_IMODE(old.st_mode) if old else 0o666 & ~_umask()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as err:
        raise WriteError(describe_os_error(err, tmp)) from None
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if old is not None:
                    os.fchmod(fh.fileno(), stat.S_IMODE(old.st_mode))
                    if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                        # Keep the owner where we may (root); otherwise the new file is ours.
                        with contextlib.suppress(OSError):
                            os.fchown(fh.fileno(), old.st_uid, old.st_gid)
                    _copy_xattrs(target, fh.fileno())
                os.fsync(fh.fileno())
            if old is not None and preserve_mtime:
                os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
            # Read the temp file back: what is on disk is what we meant to write.
            if tmp.read_bytes() != data:
                raise WriteError(f"read-back mismatch writing {target}")
            if verify is not None:
                verify(tmp)
        except OSError as err:
            raise WriteError(describe_os_error(err, target)) from None
        if os.environ.get(CRASH_ENV):
            os._exit(70)  # simulated crash between the finished temp file and the rename
        try:
            os.replace(tmp, target)
        except OSError as err:
            raise WriteError(describe_os_error(err, target)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def _copy_xattrs(source: Path, fd: int) -> None:
    """Give the new file (``fd``) the extended attributes of the one it replaces.

    The rename replaces the inode, and with it what other programs keep beside the bytes: KDE's
    tags and ratings (``user.xdg.tags``, ``user.baloo.rating``), POSIX ACLs, SELinux labels.
    A ``user.*`` attribute that cannot be copied fails the write (a person's data would be lost);
    the system namespaces are copied where allowed. Linux only: Python has no xattr calls on
    macOS or Windows.
    """
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(source)
    except OSError:
        return  # the file system has no extended attributes
    for name in names:
        try:
            os.setxattr(fd, name, os.getxattr(source, name))
        except OSError as err:
            if name.startswith("user."):
                raise WriteError(
                    f"cannot keep extended attribute {name} of {source}: {err.strerror}"
                ) from None


def atomic_delete(path: Path) -> None:
    """Delete ``path`` durably (unlink + fsync of the folder); one-line :class:`WriteError`."""
    check_writable(path, in_place=True)
    try:
        path.unlink()
    except OSError as err:
        raise WriteError(describe_os_error(err, path)) from None
    fsync_dir(path.parent)


def _umask() -> int:
    # os.umask can only be read by setting it; set it back immediately.
    current = os.umask(0o022)
    os.umask(current)
    return current
