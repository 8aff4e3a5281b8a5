"""Discovery: recursive, sorted, by content, hidden/sidecar skipping, symlink loops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from photocap.library import DiscoveryFailure, PhotoFile, discover_photos, pair_leads


def test_finds_every_photo_once_in_sorted_order(sample_photos) -> None:
    items = list(discover_photos([sample_photos.root]))
    found = [i.path for i in items if isinstance(i, PhotoFile)]
    expected = {*sample_photos.good.values(), *sample_photos.bad.values()}
    assert set(found) == expected
    assert len(found) == len(expected)  # the symlink loop did not visit anything twice
    assert found == sorted(found, key=lambda p: p.parts)
    for ignored in sample_photos.ignored.values():
        assert ignored not in found
    assert list(discover_photos([sample_photos.root])) == items  # deterministic


def test_stat_is_recorded(sample_photos) -> None:
    item = next(iter(discover_photos([sample_photos.good["plain.png"]])))
    assert isinstance(item, PhotoFile)
    st = sample_photos.good["plain.png"].stat()
    assert (item.size, item.mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_explicit_paths_and_missing_roots(tmp_path: Path, sample_photos) -> None:
    items = list(discover_photos([tmp_path / "nope", sample_photos.ignored["text"]]))
    assert all(isinstance(i, DiscoveryFailure) for i in items)
    assert items[0].error == "no such file or folder"
    assert "not an image" in items[1].error


def test_overlapping_roots_give_each_photo_once(sample_photos) -> None:
    folder = sample_photos.root / "good"
    photo = sample_photos.good["plain.png"]
    once = [i.path for i in discover_photos([folder]) if isinstance(i, PhotoFile)]
    roots = [folder, photo, photo, str(photo)]  # a file given twice, and inside a folder given
    found = [i.path for i in discover_photos(roots) if isinstance(i, PhotoFile)]
    assert sorted(found) == sorted(once)


def test_symlinked_folder_is_followed(tmp_path: Path, sample_photos) -> None:
    link = tmp_path / "link"
    os.symlink(sample_photos.root / "good", link)
    found = [i.path for i in discover_photos([link]) if isinstance(i, PhotoFile)]
    assert link / "plain.png" in found


def test_unreadable_folder_is_a_failure_and_walk_goes_on(tmp_path: Path) -> None:
    from conftest import make_tiny_jpegs

    make_tiny_jpegs(tmp_path / "a", 2)
    locked = tmp_path / "b"
    make_tiny_jpegs(locked, 1)
    make_tiny_jpegs(tmp_path / "c", 2)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: chmod 000 does not block reads")
        items = list(discover_photos([tmp_path]))
        failures = [i for i in items if isinstance(i, DiscoveryFailure)]
        assert [f.path for f in failures] == [locked]
        assert "permission denied" in failures[0].error
        assert sum(isinstance(i, PhotoFile) for i in items) == 4
    finally:
        locked.chmod(0o755)


def test_thumbnail_folders_and_app_libraries_are_not_entered(tmp_path: Path) -> None:
    from conftest import make_tiny_jpegs

    make_tiny_jpegs(tmp_path / "2024", 1)
    make_tiny_jpegs(tmp_path / "2024" / "@eaDir" / "IMG_0001.JPG", 2)  # Synology thumbnails
    make_tiny_jpegs(tmp_path / "#recycle", 1)
    make_tiny_jpegs(tmp_path / "Photos Library.photoslibrary" / "originals" / "0", 2)
    make_tiny_jpegs(tmp_path / "Catalog Previews.LRDATA" / "a", 1)  # any case
    found = [i.path for i in discover_photos([tmp_path]) if isinstance(i, PhotoFile)]
    assert [p.parent for p in found] == [tmp_path / "2024"]
    # Given explicitly, such a folder is walked: the user asked for it.
    library = tmp_path / "Photos Library.photoslibrary"
    assert len([i for i in discover_photos([library]) if isinstance(i, PhotoFile)]) == 2


def test_names_that_are_not_utf8_fail_one_by_one(tmp_path: Path) -> None:
    # A latin-1 archive on Linux: the name's bytes are not UTF-8, so the index (SQLite text)
    # cannot hold the path. Each such photo or folder fails with a reason; the rest is found.
    from conftest import make_tiny_jpegs

    from photocap.image import describe_path
    from photocap.library import NOT_UTF8

    make_tiny_jpegs(tmp_path, 1)
    latin = os.fsdecode(b"caf\xe9")  # "café" in latin-1
    (tmp_path / "img_0000.jpg").rename(tmp_path / f"{latin}.jpg")
    make_tiny_jpegs(tmp_path / f"{latin} 2019", 2)
    (tmp_path / f"notes {latin}.txt").write_text("not a photo")
    make_tiny_jpegs(tmp_path / "ok", 1)
    items = list(discover_photos([tmp_path]))
    failures = [(i.path.name, i.error) for i in items if isinstance(i, DiscoveryFailure)]
    assert failures == [(f"{latin} 2019", NOT_UTF8), (f"{latin}.jpg", NOT_UTF8)]
    assert [i.path for i in items if isinstance(i, PhotoFile)] == [tmp_path / "ok/img_0000.jpg"]
    assert describe_path(tmp_path / f"{latin}.jpg").endswith("caf\\xe9.jpg")


def test_raw_jpeg_pairs_are_found_in_each_folder(tmp_path: Path) -> None:
    from raw_helpers import make_dng

    (tmp_path / "b").mkdir()
    for name in ("IMG_1.CR2", "b/IMG_1.NEF", "b/img_2.nef", "b/IMG_3.DNG", "b/IMG_3.ARW"):
        make_dng(tmp_path / name)
    for name in ("IMG_1.JPG", "b/IMG_2.JPG", "b/IMG_3.jpg", "b/IMG_4.JPG"):
        (tmp_path / name).write_bytes(b"\xff\xd8\xff")  # a JPEG's first bytes are enough here
    leads = {p.path.relative_to(tmp_path).as_posix(): p.lead for p in discover_photos([tmp_path])}
    assert leads == {
        "IMG_1.CR2": tmp_path / "IMG_1.JPG",  # a pair
        "IMG_1.JPG": None,  # the JPEG leads; it follows nothing
        "b/IMG_1.NEF": None,  # its JPEG is in another folder
        "b/IMG_2.JPG": None,
        "b/IMG_3.ARW": None,  # two RAWs for one JPEG: which shot?
        "b/IMG_3.DNG": None,
        "b/IMG_3.jpg": None,
        "b/IMG_4.JPG": None,
        "b/img_2.nef": tmp_path / "b" / "IMG_2.JPG",  # the case aside, as Lightroom pairs
    }
    assert pair_leads(["A.CR3", "A.HEIC"]) == {"A.CR3": "A.HEIC"}
    assert pair_leads(["A.CR3", "A.HEIC", "A.JPG"]) == {}  # two renderings: none is the lead
    assert pair_leads(["A.PNG", "A.DNG", "B.DNG"]) == {}  # a PNG is no camera rendering
