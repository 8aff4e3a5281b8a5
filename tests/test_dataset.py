"""Flickr8k on disk: the Kaggle and the original layouts, and clear errors for broken copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from flickr_fixtures import SHARED_FLICKR, make_fake_flickr, needs_shared

from photocap.dataset import SPLIT_FILES, load_flickr8k
from photocap.errors import DatasetError


@pytest.mark.parametrize("layout", ["kaggle", "original"])
def test_both_layouts_read_photos_captions_and_splits(tmp_path: Path, layout: str) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", layout, n_train=6, n_dev=3, n_test=2)
    data = load_flickr8k(fake.root)
    assert data.image_dir == fake.image_dir
    assert data.split("train") == fake.train
    assert data.split("dev") == fake.dev
    assert data.split("test") == fake.test
    assert data.split("train", limit=2) == fake.train[:2]
    for name in fake.train + fake.dev + fake.test:
        assert data.captions[name] == [c.strip() for c in fake.captions[name]]
        assert data.image_path(name).is_file()
    # captions with commas survive the CSV quoting intact
    assert any("," in c for c in data.captions[fake.train[0]])
    assert "The dog, happy and fast, runs through the grass." in data.captions[fake.train[0]]


def test_both_layouts_give_the_same_dataset(tmp_path: Path) -> None:
    kaggle = load_flickr8k(make_fake_flickr(tmp_path / "k", "kaggle", 5, 2).root)
    original = load_flickr8k(make_fake_flickr(tmp_path / "o", "original", 5, 2).root)
    for split in ("train", "dev"):
        assert kaggle.split(split) == original.split(split)
    for name in kaggle.split("train") + kaggle.split("dev"):
        assert kaggle.captions[name] == original.captions[name]


def test_quirky_token_line_does_not_break_reading(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "original", n_train=4, n_dev=2)
    token = (fake.root / "Flickr8k_text" / "Flickr8k.token.txt").read_text()
    assert f"{fake.train[0]}.1#0\t" in token  # the fixture really has the quirk
    data = load_flickr8k(fake.root)
    assert len(data.captions[fake.train[0]]) == 5  # not mixed with the ".jpg.1" group
    assert data.split("train") == fake.train


def test_split_files_at_the_top_of_an_original_layout(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "original", n_train=4, n_dev=2)
    for split in ("train", "dev"):
        name = SPLIT_FILES[split]
        shutil.move(fake.root / "Flickr8k_text" / name, fake.root / name)
    assert load_flickr8k(fake.root).split("dev") == fake.dev


def test_split_lists_with_crlf_and_blank_lines(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=4, n_dev=2)
    (fake.root / SPLIT_FILES["dev"]).write_text("\r\n".join(["", *fake.dev, "", ""]))
    assert load_flickr8k(fake.root).split("dev") == fake.dev


def _one_line(err: pytest.ExceptionInfo[DatasetError]) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_missing_or_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_flickr8k(tmp_path / "does-not-exist")
    assert "not found" in _one_line(err)
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError) as err:
        load_flickr8k(tmp_path / "random")
    assert "Images/" in _one_line(err)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DatasetError):
        load_flickr8k(a_file)


def test_photos_but_no_captions(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=3, n_dev=2)
    (fake.root / "captions.txt").unlink()
    with pytest.raises(DatasetError) as err:
        load_flickr8k(fake.root)
    assert "no captions" in _one_line(err)


def test_one_photo_of_a_split_missing_is_counted_without_a_plural(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=3, n_dev=2)
    (fake.image_dir / fake.dev[0]).unlink()
    data = load_flickr8k(fake.root)
    with pytest.raises(DatasetError) as err:
        data.split("dev")
    assert _one_line(err) == (
        f"photos of the dev split missing from {fake.image_dir}: 1 (first: {fake.dev[0]})"
    )


def test_csv_that_is_not_the_kaggle_layout(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=3, n_dev=2)
    (fake.root / "captions.txt").write_text("filename;text\na.jpg;A dog.\n")
    with pytest.raises(DatasetError) as err:
        load_flickr8k(fake.root)
    assert "Kaggle" in _one_line(err)
    (fake.root / "captions.txt").write_text("image,caption\n")
    with pytest.raises(DatasetError, match="no captions"):
        load_flickr8k(fake.root)


def test_kaggle_captions_with_a_byte_order_mark(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=3, n_dev=2)
    text = (fake.root / "captions.txt").read_text(encoding="utf-8")
    (fake.root / "captions.txt").write_text("\ufeff" + text, encoding="utf-8")
    assert load_flickr8k(fake.root).split("train") == fake.train


def test_missing_train_split_file(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=3, n_dev=2)
    (fake.root / SPLIT_FILES["train"]).unlink()
    with pytest.raises(DatasetError) as err:
        load_flickr8k(fake.root)
    assert SPLIT_FILES["train"] in _one_line(err)


def test_missing_dev_or_test_split_file(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "original", n_train=3, n_dev=0)
    data = load_flickr8k(fake.root)
    for split in ("dev", "test"):
        with pytest.raises(DatasetError) as err:
            data.split(split)
        assert SPLIT_FILES[split] in _one_line(err)
    with pytest.raises(DatasetError):
        data.split("validation")


def test_empty_split(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=3, n_dev=2)
    (fake.root / SPLIT_FILES["dev"]).write_text("\n\n")
    with pytest.raises(DatasetError) as err:
        load_flickr8k(fake.root).split("dev")
    assert "empty" in _one_line(err)


def test_missing_images(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "kaggle", n_train=4, n_dev=2)
    (fake.image_dir / fake.train[2]).unlink()
    data = load_flickr8k(fake.root)
    with pytest.raises(DatasetError) as err:
        data.split("train")
    message = _one_line(err)
    assert "missing" in message and fake.train[2] in message
    assert data.split("train", limit=2) == fake.train[:2]  # the first two are there
    assert data.split("dev") == fake.dev


def test_split_names_without_captions(tmp_path: Path) -> None:
    fake = make_fake_flickr(tmp_path / "f8k", "original", n_train=3, n_dev=2)
    path = fake.root / "Flickr8k_text" / SPLIT_FILES["dev"]
    path.write_text(path.read_text() + "9999_nocaption.jpg\n")
    with pytest.raises(DatasetError) as err:
        load_flickr8k(fake.root).split("dev")
    assert "9999_nocaption.jpg" in _one_line(err)


@needs_shared
@pytest.mark.shared
def test_real_flickr8k_kaggle_layout() -> None:
    data = load_flickr8k(SHARED_FLICKR)
    train, dev = data.split("train"), data.split("dev")
    assert (len(train), len(dev)) == (6000, 1000)
    assert not set(train) & set(dev)
    assert all(len(data.captions[n]) == 5 for n in train[:500] + dev)
    assert any("," in c for n in train for c in data.captions[n])


@needs_shared
@pytest.mark.shared
def test_real_flickr8k_original_token_file_with_its_quirk(tmp_path: Path) -> None:
    """The real Flickr8k.token.txt (with the `.jpg.1#k` line) read as the original layout."""
    root = tmp_path / "f8k"
    (root / "Flickr8k_text").mkdir(parents=True)
    (root / "Flicker8k_Dataset").symlink_to(SHARED_FLICKR / "Images")
    for name in ("Flickr8k.token.txt", SPLIT_FILES["train"], SPLIT_FILES["dev"]):
        shutil.copy(SHARED_FLICKR / name, root / "Flickr8k_text" / name)
    original = load_flickr8k(root)
    kaggle = load_flickr8k(SHARED_FLICKR)
    dev = original.split("dev")
    assert dev == kaggle.split("dev")
    assert len(original.split("train")) == 6000
    for name in dev[:200]:
        assert original.captions[name] == kaggle.captions[name]
    # the quirky group is kept under its own odd name, and no split refers to it
    assert len(original.captions["2258277193_586949ec62.jpg.1"]) == 5
    assert "2258277193_586949ec62.jpg.1" not in set(original.split("train")) | set(dev)
