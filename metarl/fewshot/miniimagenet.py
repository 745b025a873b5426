"""mini-ImageNet in the standard protocol: Ravi & Larochelle's split files over your images.

mini-ImageNet (Vinyals et al. 2016) is 100 ImageNet classes of 600 images each. The split every
paper since uses is Ravi & Larochelle's (2017): 64 classes to meta-train on, 16 to validate on
(model selection) and 20 to test on, given as three files beside an ``images/`` folder::

    <root>/train.csv     filename,label         (64 classes × 600 rows)
    <root>/val.csv       filename,label         (16 classes × 600 rows)
    <root>/test.csv      filename,label         (20 classes × 600 rows)
    <root>/images/       every file the CSVs name, e.g. n0153282900000005.jpg

Each CSV starts with the header ``filename,label``; every row names one image of
``images/`` and its class (a WordNet id such as ``n01532829``). Images are resized to 84×84
(RGB), as in every paper since Vinyals et al. The images are ImageNet's, under ImageNet's terms:
metarl never downloads them; bring your copy and pass its folder
(``--dataset miniimagenet --data-path <root>``).

Example:
    >>> train = mini_imagenet("miniimagenet", "train")  # doctest: +SKIP
    >>> train.num_classes, train.image_shape  # doctest: +SKIP
    (64, (3, 84, 84))
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from metarl.fewshot.data import (
    ImageClasses,
    _atomic_save,
    _cache_key,
    _decode,
    default_cache_dir,
)

__all__ = ["MINI_IMAGENET_SPLITS", "mini_imagenet", "read_split_file"]

#: split -> the number of classes of Ravi & Larochelle's split.
MINI_IMAGENET_SPLITS = {"train": 64, "val": 16, "test": 20}
HEADER = ["filename", "label"]
#: Split files are a few MB; anything far larger is not one.
_MAX_SPLIT_BYTES = 64 << 20


def _layout_hint(root: Path) -> str:
    return (
        f"expected {root}/train.csv, val.csv and test.csv (Ravi & Larochelle's split files, "
        f"header filename,label) and {root}/images/ holding every file they name"
    )


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """``{label: [filename, ...]}`` from one of Ravi & Larochelle's CSV files, in file order.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the header is not ``filename,label``, or a row is not two fields.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"split file {path} was not found; {_layout_hint(path.parent)} (metarl never "
            "downloads mini-ImageNet: bring your own copy)"
        )
    if path.stat().st_size > _MAX_SPLIT_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, too large for a split file")
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        got = ",".join(rows[0]) if rows else "nothing (an empty file)"
        raise ValueError(
            f"{path} starts with {got!r}, not the header 'filename,label' of Ravi & "
            "Larochelle's split files; use their train.csv / val.csv / test.csv"
        )
    classes: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(
                f"{path}, line {line}: expected 'filename,label', got {','.join(row)!r}"
            )
        filename, label = row[0].strip(), row[1].strip()
        if Path(filename).name != filename:
            raise ValueError(
                f"{path}, line {line}: {filename!r} is a path; the split files name files of "
                "images/ by their bare name"
            )
        classes.setdefault(label, []).append(filename)
    if not classes:
        raise ValueError(f"{path} has a header but no rows; is it a complete split file?")
    return classes


def mini_imagenet(
    root: str | Path,
    split: str = "train",
    image_size: int = 84,
    cache_dir: str | Path | None = None,
) -> ImageClasses:
    """The classes of ``split`` (``"train"``, ``"val"`` or ``"test"``), as RGB images resized
    to ``image_size`` × ``image_size``.

    Args:
        root: the folder with ``train.csv``, ``val.csv``, ``test.csv`` and ``images/``.
        split: which split file to read.
        image_size: side of the square images (84 in the standard protocol).
        cache_dir: where the decoded array is kept as ``.npz`` for the next call (default
            :func:`~metarl.fewshot.data.default_cache_dir`; ``""`` disables it).

    Raises:
        FileNotFoundError: ``root``, a split file, ``images/`` or an image the split file
            names is missing (the message says which and what the layout must be).
        ValueError: a split file of the wrong format.
    """
    if split not in MINI_IMAGENET_SPLITS:
        raise ValueError(f"mini-ImageNet's splits are train, val and test, got {split!r}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(
            f"mini-ImageNet path {str(base)!r} was not found; metarl never downloads it: "
            f"bring your own copy and pass its folder with --data-path ({_layout_hint(base)})"
        )
    classes = read_split_file(base / f"{split}.csv")
    images_dir = base / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{base} has no images/ folder; {_layout_hint(base)}")
    missing = [
        (label, name)
        for label, names in classes.items()
        for name in names
        if not (images_dir / name).is_file()
    ]
    if missing:
        label, name = missing[0]
        raise FileNotFoundError(
            f"{split}.csv names {name} (class {label}), which is not in {images_dir} "
            f"({len(missing)} of its files are missing); put every image the split files "
            "name in images/"
        )
    labels = list(classes)
    size = (image_size, image_size)
    cache = None
    if cache_dir != "":
        cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        listing = [(label, classes[label]) for label in labels]
        tag = _cache_key(str(base.resolve()), listing, size)
        cache = cdir / f"miniimagenet-{split}-{image_size}-{tag}.npz"
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            arrays = [f[f"c{i}"] for i in range(len(labels))]
    else:
        arrays = [
            np.stack([_decode(images_dir / name, size, 3) for name in classes[label]])
            for label in labels
        ]
        if cache is not None:
            _atomic_save(cache, {f"c{i}": a for i, a in enumerate(arrays)})
    return ImageClasses(arrays, labels)
