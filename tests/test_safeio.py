"""Atomic writes: replace or create, keep permissions and mtime, survive a crash."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from metadata_helpers import make_jpeg
from PIL import Image

from photocap.errors import WriteError
from photocap.safeio import (
    CRASH_ENV,
    atomic_write,
    check_writable,
    describe_os_error,
    is_temp_file,
    read_capped,
    temp_path_for,
)


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    """A photo folder of its own (tmp_path also holds the isolated HOME from conftest)."""
    folder = tmp_path / "lib"
    folder.mkdir()
    return folder


def test_replace_keeps_mode_and_mtime(lib: Path) -> None:
    target = lib / "photo.jpg"
    target.write_bytes(b"old")
    target.chmod(0o640)
    os.utime(target, ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    st = target.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_100_000_000_000_000_000
    assert [p.name for p in lib.iterdir()] == ["photo.jpg"]


def test_touch_updates_mtime(lib: Path) -> None:
    target = lib / "photo.jpg"
    target.write_bytes(b"old")
    os.utime(target, (1_000_000, 1_000_000))
    atomic_write(target, b"new", preserve_mtime=False)
    assert target.stat().st_mtime > 1_000_000 + 1000


def test_creates_new_file(lib: Path) -> None:
    target = lib / "photo.jpg.xmp"
    atomic_write(target, b"<x/>")
    assert target.read_bytes() == b"<x/>"


def test_failed_verification_leaves_original(lib: Path) -> None:
    target = lib / "photo.jpg"
    target.write_bytes(b"original")

    def verify(tmp: Path) -> None:
        assert tmp.read_bytes() == b"broken"  # the temp file is what we asked to write
        raise WriteError("verification failed: test")

    with pytest.raises(WriteError, match="verification failed"):
        atomic_write(target, b"broken", verify=verify)
    assert target.read_bytes() == b"original"
    assert [p.name for p in lib.iterdir()] == ["photo.jpg"]


def test_symlink_target_is_replaced_link_kept(lib: Path) -> None:
    real = lib / "real.jpg"
    real.write_bytes(b"old")
    link = lib / "link.jpg"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert link.is_symlink()
    assert real.read_bytes() == b"new"


def test_temp_names_are_hidden_and_recognised(lib: Path) -> None:
    tmp = temp_path_for(lib / "photo.jpg")
    assert tmp.parent == lib
    assert tmp.name.startswith(".photo.jpg.photocap-tmp-")
    assert is_temp_file(tmp)
    assert not is_temp_file(lib / "photo.jpg")


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from photocap.metadata.exif_writer import ExifWriter
    from photocap.writers import WriteOptions
    sys.path.insert(0, sys.argv[2])
    from metadata_helpers import record
    print(ExifWriter(WriteOptions()).write(record(Path(sys.argv[1]))))
    """
)


def test_crash_before_rename_leaves_photo_intact(lib: Path) -> None:
    photo = make_jpeg(lib / "photo.jpg")
    before = photo.read_bytes()
    env = {**os.environ, CRASH_ENV: "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(photo), str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 70, proc.stderr  # died at the injected crash point
    assert photo.read_bytes() == before
    with Image.open(photo) as img:
        img.load()
    leftovers = [p for p in lib.iterdir() if p != photo]
    assert leftovers, "the crash should have left the finished temp file behind"
    assert all(is_temp_file(p) for p in leftovers)
    # The leftover is hidden, so photo discovery skips it.
    library = pytest.importorskip("photocap.library")
    found = [getattr(p, "path", p) for p in library.discover_photos([lib])]
    assert [Path(str(p)).name for p in found] == ["photo.jpg"]


def test_read_capped_refuses_folder_and_large(lib: Path) -> None:
    (lib / "dir.xmp").mkdir()
    with pytest.raises(WriteError, match="is a folder"):
        read_capped(lib / "dir.xmp", 100, "sidecar")
    big = lib / "big.xmp"
    big.write_bytes(b"x" * 101)
    with pytest.raises(WriteError, match="too large"):
        read_capped(big, 100, "sidecar")
    assert read_capped(big, 200) == b"x" * 101


def test_a_name_too_long_is_named_not_the_path_given() -> None:
    # The photo's sidecar is the name too long: the message names it, not the photo.
    photo = Path("/lib") / ("a" * 248 + ".jpg")
    sidecar = Path(f"{photo}.xmp")
    err = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), sidecar)
    assert describe_os_error(err, photo) == f"file name too long (256 bytes): {sidecar}"
    err = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))  # no name: the path
    assert describe_os_error(err, photo) == f"File name too long: {photo}"


def test_read_only_photo_is_refused(lib: Path) -> None:
    # Whoever runs: root too (the tests run as root here, as photocap does on a NAS or in
    # Docker), for whom os.access grants every write; the mode bits are the owner's word.
    photo = lib / "photo.jpg"
    photo.write_bytes(b"old")
    photo.chmod(0o444)
    try:
        with pytest.raises(WriteError, match="file is read-only"):
            atomic_write(photo, b"new")
        assert photo.read_bytes() == b"old"
        assert [p.name for p in lib.iterdir()] == ["photo.jpg"]  # no temp file left
    finally:
        photo.chmod(0o644)
    photo.chmod(0o604)  # writable by someone: os.access decides, as before
    if os.access(photo, os.W_OK):
        atomic_write(photo, b"new")
        assert photo.read_bytes() == b"new"


def test_read_only_folder_is_refused(lib: Path) -> None:
    folder = lib / "ro"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(b"old")
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="folder is not writable"):
            atomic_write(folder / "photo.jpg", b"new")
        with pytest.raises(WriteError, match="folder is not writable"):
            atomic_write(folder / "photo.jpg.xmp", b"<x/>")
        assert sorted(p.name for p in folder.iterdir()) == ["photo.jpg"]
    finally:
        folder.chmod(0o755)


def test_read_only_messages_when_access_denied(lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores permission bits, so the refusal path is also exercised by making
    # os.access report what it reports for an ordinary user on a read-only file/folder.
    photo = lib / "photo.jpg"
    photo.write_bytes(b"old")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) != photo and real_access(p, m))
    with pytest.raises(WriteError, match=r"file is read-only: .*photo\.jpg"):
        check_writable(photo, in_place=True)
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) != lib and real_access(p, m))
    with pytest.raises(WriteError, match="folder is not writable"):
        atomic_write(photo, b"new")
    # A card, disc or share mounted read-only says so (it is not a permission to change).
    real_statvfs = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result(
        (*real_statvfs(p)[:8], real_statvfs(p).f_flag | os.ST_RDONLY, real_statvfs(p).f_namemax)
    ))  # fmt: skip
    with pytest.raises(WriteError, match=f"^read-only file system: {lib}$"):
        atomic_write(photo, b"new")
    assert photo.read_bytes() == b"old"


NOBODY_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from metadata_helpers import record
    from photocap.metadata.exif_writer import ExifWriter
    from photocap.writers import WriteOptions
    from photocap.metadata.sidecar_writer import XmpWriter
    for writer in (ExifWriter(WriteOptions()), XmpWriter(WriteOptions())):
        outcome = writer.write(record(Path(sys.argv[1])))
        print(outcome.writer, outcome.status, outcome.message)
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_real_permissions_as_unprivileged_user(tmp_path: Path) -> None:
    # Root ignores permission bits; run the writers as "nobody" to see the real refusal.
    import shutil
    import tempfile

    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="photocap-perm-", dir="/tmp"))
    try:
        base.chmod(0o755)
        ro_folder, rw_folder = base / "ro", base / "rw"
        ro_folder.mkdir(mode=0o755)  # owned by root: not writable for nobody
        rw_folder.mkdir()
        os.chown(rw_folder, nobody, nobody)
        photo_in_ro = make_jpeg(ro_folder / "photo.jpg")
        photo_in_ro.chmod(0o644)
        ro_photo = make_jpeg(rw_folder / "photo.jpg")
        os.chown(ro_photo, nobody, nobody)
        ro_photo.chmod(0o444)
        before = {p: p.read_bytes() for p in (photo_in_ro, ro_photo)}

        def run_as_nobody(photo: Path) -> str:
            try:
                proc = _run_as_nobody(photo)
            except PermissionError:
                pytest.skip("this Python is not reachable for an unprivileged user")
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        def _run_as_nobody(photo: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-c", NOBODY_SCRIPT, str(photo), str(Path(__file__).parent)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                preexec_fn=lambda: (os.setgid(nobody), os.setuid(nobody)),  # type: ignore[func-returns-value]
            )

        out = run_as_nobody(photo_in_ro)
        assert "exif failed folder is not writable" in out
        assert "xmp failed folder is not writable" in out
        out = run_as_nobody(ro_photo)
        assert "exif failed file is read-only" in out
        assert "xmp written" in out  # the sidecar goes next to it; the photo is not touched
        for path, data in before.items():
            assert path.read_bytes() == data
        assert not [p for p in ro_folder.iterdir() if p.name != "photo.jpg"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_read_capped_allocates_by_file_not_by_cap(lib: Path) -> None:
    import tracemalloc

    small = lib / "photo.jpg"
    small.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        data = read_capped(small, 2 * 1024**3, "photo")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == b"x" * 1000
    assert peak < 1_000_000  # read(cap + 1) asked for 2 GiB up front


def test_read_capped_reads_a_file_that_grew(lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = lib / "photo.jpg"
    path.write_bytes(b"x" * 100)
    real_stat = Path.stat
    # stat taken before the file grew to 150 bytes
    monkeypatch.setattr(Path, "stat", lambda self, **kw: _shrunk(real_stat(self, **kw), 100))
    path.write_bytes(b"x" * 150)
    assert read_capped(path, 200) == b"x" * 150
    with pytest.raises(WriteError, match="too large"):
        read_capped(path, 120)


def _shrunk(st: os.stat_result, size: int) -> os.stat_result:
    fields = list(st)
    fields[6] = size  # st_size
    return os.stat_result(fields)


def _set_tag_or_skip(path: Path) -> None:
    if not hasattr(os, "setxattr"):
        pytest.skip("no extended attributes in this Python (Linux only)")
    try:
        os.setxattr(path, "user.xdg.tags", b"holiday,beach")  # what KDE's Dolphin writes
    except OSError:
        pytest.skip("this file system has no user extended attributes")


def test_rewrite_keeps_extended_attributes(lib: Path) -> None:
    photo = lib / "photo.jpg"
    photo.write_bytes(b"old")
    _set_tag_or_skip(photo)
    atomic_write(photo, b"new")
    assert photo.read_bytes() == b"new"
    assert os.getxattr(photo, "user.xdg.tags") == b"holiday,beach"


def test_rewrite_refused_when_a_user_attribute_cannot_be_kept(
    lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = lib / "photo.jpg"
    photo.write_bytes(b"old")
    _set_tag_or_skip(photo)

    def refuse(*args: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse)
    with pytest.raises(WriteError, match=r"cannot keep extended attribute user\.xdg\.tags"):
        atomic_write(photo, b"new")
    assert photo.read_bytes() == b"old"
    assert sorted(p.name for p in lib.iterdir()) == ["photo.jpg"]  # no temp file left


def test_photo_with_a_long_name_can_be_rewritten(lib: Path) -> None:
    # 80 Japanese characters are 244 bytes with ".jpg": the temp name beside it must still fit
    # in 255 bytes (it took the whole name plus 23 bytes: "File name too long").
    photo = lib / ("写真" * 40 + ".jpg")
    photo.write_bytes(b"old")
    atomic_write(photo, b"new")
    assert photo.read_bytes() == b"new"
    assert [p.name for p in lib.iterdir()] == [photo.name]
    tmp = temp_path_for(photo)
    assert len(os.fsencode(tmp.name)) <= 255 and is_temp_file(tmp)
