"""Flickr8k on disk, in either layout a user may have.

- Kaggle: ``Images/`` + ``captions.txt`` (CSV ``image,caption``).
- Original release: ``Flicker8k_Dataset/`` (sic) + ``Flickr8k_text/Flickr8k.token.txt``
  (``name.jpg#k<TAB>caption``) and the split lists ``Flickr_8k.{train,dev,test}Images.txt``.

The split lists may sit next to the captions, in ``Flickr8k_text/``, or at the top of the folder.
The official train/dev/test split is used (Karpathy's Flickr8k split is the same partition).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from photocap.errors import DatasetError

SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
_IMAGE_DIRS = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "images")
_TEXT_DIRS = (".", "Flickr8k_text")


@dataclass(frozen=True)
class Flickr8k:
    """Photos and human captions of one copy of Flickr8k."""

    root: Path
    image_dir: Path
    captions: dict[str, list[str]]  # image file name -> its (5) captions
    split_files: dict[str, Path]  # split name -> list file, for the splits present

    def split(self, name: str, limit: int | None = None) -> list[str]:
        """Image names of a split that exist on disk, in file order (first ``limit`` only)."""
        if name not in self.split_files:
            raise DatasetError(
                f"split {name!r} not found in {self.root}: expected {SPLIT_FILES.get(name, name)}"
            )
        names = [line.strip() for line in self.split_files[name].read_text().splitlines()]
        names = [n for n in names if n]
        if limit is not None:
            names = names[:limit]
        missing = [n for n in names if n not in self.captions]
        if missing:
            raise DatasetError(
                f"photos of the {name} split with no captions: {len(missing)} (first: {missing[0]})"
            )
        absent = [n for n in names if not (self.image_dir / n).is_file()]
        if absent:
            raise DatasetError(
                f"photos of the {name} split missing from {self.image_dir}: {len(absent)} "
                f"(first: {absent[0]})"
            )
        if not names:
            raise DatasetError(f"the {name} split of {self.root} is empty")
        return names

    def image_path(self, name: str) -> Path:
        return self.image_dir / name


def load_flickr8k(root: Path) -> Flickr8k:
    """Find the photos, captions and split lists under ``root``; clear errors otherwise."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    image_dir = next((root / d for d in _IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(
            f"no photo folder in {root}: expected Images/ (Kaggle) or Flicker8k_Dataset/ (original)"
        )
    captions = _read_captions(root)
    split_files: dict[str, Path] = {}
    for split, filename in SPLIT_FILES.items():
        for sub in _TEXT_DIRS:
            if (root / sub / filename).is_file():
                split_files[split] = root / sub / filename
                break
    if "train" not in split_files:
        raise DatasetError(
            f"no {SPLIT_FILES['train']} in {root} or {root / 'Flickr8k_text'}: "
            "photocap trains on the official split"
        )
    return Flickr8k(root, image_dir, captions, split_files)


def _read_captions(root: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = defaultdict(list)
    kaggle = root / "captions.txt"
    token_file = next(
        (
            root / sub / "Flickr8k.token.txt"
            for sub in _TEXT_DIRS
            if (root / sub / "Flickr8k.token.txt").is_file()
        ),
        None,
    )
    if kaggle.is_file():
        with kaggle.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
                raise DatasetError(f"{kaggle} is not the Kaggle layout (header image,caption)")
            for row in reader:
                if len(row) >= 2 and row[0].strip():
                    captions[row[0].strip()].append(",".join(row[1:]).strip())
    elif token_file is not None:
        for line in token_file.read_text(encoding="utf-8").splitlines():
            if "\t" not in line:
                continue
            key, caption = line.split("\t", 1)
            name = key.rsplit("#", 1)[0]
            captions[name].append(caption.strip())
    else:
        raise DatasetError(
            f"no captions in {root}: expected captions.txt (Kaggle) or "
            "Flickr8k_text/Flickr8k.token.txt (original)"
        )
    if not captions:
        raise DatasetError(f"no captions could be read in {root}")
    return dict(captions)
