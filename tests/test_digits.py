"""MNIST's IDX files and scikit-learn's digits as few-shot data sets.

The IDX files are written by the tests (nothing downloads MNIST); the learning test runs on
scikit-learn's digits, which ship with scikit-learn.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.fewshot.data import EpisodeSampler
from metarl.fewshot.digits import TEST_CLASSES, TRAIN_CLASSES, mnist, read_idx, sklearn_digits


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _idx(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.tobytes()


def _write_mnist(root: Path, n: int = 60, gz: bool = False, seed: int = 0) -> dict[str, tuple]:
    """Four IDX files of ``n`` random 28x28 images with labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = _idx(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files_into_classes(tmp_path: Path, gz: bool) -> None:
    written = _write_mnist(tmp_path, gz=gz)
    images, labels = written["train"]
    np.testing.assert_array_equal(read_idx(tmp_path / ("train-images-idx3-ubyte" + ".gz" * gz)),
                                  images)  # fmt: skip
    train = mnist(tmp_path, "train")
    assert train.names == [str(c) for c in TRAIN_CLASSES] and train.image_shape == (1, 28, 28)
    for c, arr in zip(TRAIN_CLASSES, train.images, strict=True):
        np.testing.assert_array_equal(arr[:, 0], images[labels == c])
    test = mnist(tmp_path, "test")
    t_images, t_labels = written["t10k"]
    assert test.names == [str(c) for c in TEST_CLASSES]
    np.testing.assert_array_equal(test.images[0][:, 0], t_images[t_labels == 5])
    assert mnist(tmp_path, "train", classes=[7, 3]).names == ["7", "3"]
    small = mnist(tmp_path, "test", image_size=14)
    assert small.image_shape == (1, 14, 14)
    batch = EpisodeSampler(test, 5, 1, 2).sample(3, np.random.default_rng(0))
    assert batch.support_x.shape == (3, 5, 1, 28, 28)
    assert float(batch.support_x.max()) <= 1.0


def test_mnist_bad_input_gets_one_line(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def expect(exc: type[BaseException], match: str, *args: object, **kw: object) -> None:
        with pytest.raises(exc, match=match) as e:
            mnist(*args, **kw)  # type: ignore[arg-type]
        errors.append(e.value)

    expect(FileNotFoundError, "does not exist.*not downloaded", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect(FileNotFoundError, "no train-images-idx3-ubyte.*not downloaded.*--data-path", empty)
    _write_mnist(tmp_path / "ok")
    expect(ValueError, "split must be", tmp_path / "ok", "val")
    expect(ValueError, "distinct digits", tmp_path / "ok", "train", [1, 1])
    expect(ValueError, "distinct digits", tmp_path / "ok", "train", [12])
    # wrong magic number: a PNG renamed
    bad = tmp_path / "magic"
    _write_mnist(bad)
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    expect(ValueError, r"not an IDX file: magic number 0x89504e47", bad)
    # truncated images file
    cut = tmp_path / "cut"
    _write_mnist(cut)
    f = cut / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    expect(ValueError, "is truncated: its header gives shape", cut)
    # count mismatch between images and labels
    mism = tmp_path / "mismatch"
    _write_mnist(mism)
    (mism / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(59, np.uint8)))
    expect(ValueError, "has 60 images but train-labels-idx1-ubyte has 59 labels", mism)
    # labels file given as the images file
    swap = tmp_path / "swap"
    _write_mnist(swap)
    (swap / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros(60, np.uint8)))
    expect(ValueError, "not images", swap)
    # damaged gzip
    dgz = tmp_path / "dgz"
    _write_mnist(dgz, gz=True)
    g = dgz / "t10k-labels-idx1-ubyte.gz"
    g.write_bytes(g.read_bytes()[:20])
    expect(ValueError, "damaged gzip", dgz, "test")
    for e in errors:
        assert "\n" not in str(e), e


def test_sklearn_digits_split_by_class() -> None:
    train, test = sklearn_digits("train", image_size=None), sklearn_digits("test", image_size=None)
    assert train.names == ["0", "1", "2", "3", "4"] and test.names == ["5", "6", "7", "8", "9"]
    assert train.image_shape == (1, 8, 8) and train.min_class_size >= 170
    assert int(max(a.max() for a in train.images)) == 255
    assert sklearn_digits("test").image_shape == (1, 28, 28)


def test_cli_trains_on_digits_and_mnist_and_refuses_missing_mnist(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from metarl.cli import main

    common = ["--num-iterations", "2", "--device", "cpu", "--no-tensorboard", "--image-size", "16"]
    small = ["--meta-batch-size", "2", "--num-query", "2", "--eval-query", "2"]
    for dataset in (
        ["--dataset", "digits"],
        ["--dataset", "mnist", "--data-path", str(tmp_path / "m")],
    ):
        _write_mnist(tmp_path / "m", n=80)
        run = tmp_path / dataset[1]
        args = ["fewshot", "train", *dataset, "--learner", "protonet", "--run-dir", str(run)]
        assert main([*args, *common, *small, "--num-eval-episodes", "4"]) == 0
        assert "accuracy over 4 held-out 5-way 1-shot" in capsys.readouterr().out
        assert json.loads((run / "eval.json").read_text())["dataset"] == dataset[1]
    missing = ["fewshot", "train", "--dataset", "mnist", "--data-path", str(tmp_path / "none")]
    assert main([*missing, "--run-dir", str(tmp_path / "r"), *common]) == 2
    err = capsys.readouterr().err
    assert "not downloaded by metarl" in err and len(err.strip().splitlines()) == 1


def test_digits_example_few_shot_and_pretrain_finetune_learn() -> None:
    """scripts/example_digits.py, shortened: both learners end well above chance on the
    unseen digits 5-9, and training lifts their accuracy on the digits it trains on (which
    fails if learning breaks: random features with fine-tuning start far lower there)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "example_digits.py"
    spec = importlib.util.spec_from_file_location("example_digits", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--iterations", "150", "--episodes", "100"])
    for name in ("protonet", "baseline"):
        r = out[name]
        assert r["test_digits"] > 0.2 + 0.15, (name, r)  # 5-way chance is 0.2
        assert r["train_digits"] > r["train_digits_untrained"] + 0.1, (name, r)
