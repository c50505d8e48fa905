"""Datasets: every registry entry declares its shape/range; splits are seeded, fixed and stored; the
downloadable ones load from local folders laid out like the real sources and fail clearly offline."""
from __future__ import annotations

import gzip
import pathlib
import pickle

import numpy as np
import pytest
import torch

from core.errors import DatasetUnavailable, UnknownEntry
from zoo.datasets import DATASETS, SplitMismatch, load_dataset

EMBEDDED = ["digits", "digits-t900", "mnist1d", "mnist1d-20k", "arrests"]
DOWNLOADABLE = [n for n in DATASETS.names() if n not in EMBEDDED]


@pytest.fixture
def cache(tmp_path: pathlib.Path, monkeypatch) -> pathlib.Path:
    """A fresh split cache (generated mnist1d arrays are reused from the session cache)."""
    from zoo.datasets import _cached, cache_dir

    shared = cache_dir()
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    if (shared / "mnist1d").exists():
        (tmp_path / "cache" / "mnist1d").symlink_to(shared / "mnist1d")
    _cached.cache_clear()
    yield tmp_path / "cache"
    _cached.cache_clear()


def assert_valid_splits(s, n_classes: int | None = None) -> None:
    info = s.info
    for split in ("train", "val", "test"):
        x, y = s.split(split)
        assert len(x) == len(y) > 0
        assert tuple(x.shape[1:]) == info.input_shape
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert info.value_range[0] <= float(x.min()) and float(x.max()) <= info.value_range[1]
        assert 0 <= int(y.min()) and int(y.max()) < info.n_classes
        for feat in info.sensitive:
            assert s.sensitive[split][feat].shape == y.shape
    if n_classes is not None:
        assert info.n_classes == n_classes


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_datasets_load_with_declared_shapes(name: str, cache) -> None:
    assert_valid_splits(load_dataset(name, 0))


@pytest.mark.parametrize("name", EMBEDDED)
def test_splits_are_fixed_stored_and_seeded(name: str, cache) -> None:
    from zoo.datasets import _cached

    a = load_dataset(name, 0)
    assert (cache / "splits" / f"{name}-seed0.npz").exists()
    _cached.cache_clear()  # a second process would read the stored file
    b = load_dataset(name, 0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = load_dataset(name, 1)
    assert not torch.equal(a.x_train, c.x_train)
    # same examples, differently partitioned: the union of the splits is the whole dataset for both seeds
    n = lambda s: len(s.y_train) + len(s.y_val) + len(s.y_test)  # noqa: E731
    assert n(a) == n(c)
    assert torch.equal(torch.sort(torch.cat([a.y_train, a.y_val, a.y_test])).values,
                       torch.sort(torch.cat([c.y_train, c.y_val, c.y_test])).values)


def test_a_tampered_split_file_is_refused(cache) -> None:
    from zoo.datasets import _cached

    load_dataset("digits", 3)
    path = cache / "splits" / "digits-seed3.npz"
    with np.load(path) as f:
        parts = {k: f[k] for k in f.files}
    parts["train"] = parts["train"][::-1].copy()
    np.savez(path, **parts)
    _cached.cache_clear()
    with pytest.raises(SplitMismatch, match="checksum"):
        load_dataset("digits", 3)


def test_split_made_for_other_data_is_refused(cache) -> None:
    from zoo.datasets import fingerprint, stored_split

    stored_split("toy", 0, 10, fingerprint(np.arange(10)))
    with pytest.raises(SplitMismatch, match="toy"):
        stored_split("toy", 0, 10, fingerprint(np.arange(1, 11)))


def test_mnist1d_20k_has_a_large_fixed_test_set_and_leaves_mnist1d_alone(cache) -> None:
    big, small = load_dataset("mnist1d-20k", 0), load_dataset("mnist1d", 0)
    assert (len(big.y_train), len(big.y_val), len(big.y_test)) == (3000, 1000, 20000)
    assert (len(small.y_train), len(small.y_val), len(small.y_test)) == (3000, 1000, 1000)
    assert big.y_test.bincount(minlength=10).min() > 1800  # every class well represented
    assert big.info.name == "mnist1d-20k" and small.info.name == "mnist1d"
    assert (cache / "splits" / "mnist1d-20k-seed0.npz").exists() and (cache / "splits" / "mnist1d-seed0.npz").exists()
    # no training example reappears in the test set
    seen = {tuple(r.tolist()) for r in big.x_train[:, 0].numpy().round(5)}
    assert not any(tuple(r.tolist()) in seen for r in big.x_test[:, 0].numpy().round(5))


def test_digits_t900_has_half_the_digits_as_a_fixed_test_set(cache) -> None:
    wide, wide1, small = load_dataset("digits-t900", 0), load_dataset("digits-t900", 1), load_dataset("digits", 0)
    assert (len(wide.y_train), len(wide.y_val), len(wide.y_test)) == (672, 225, 900)
    assert len(small.y_test) == 360 and small.info.name == "digits"  # digits itself is left alone
    assert torch.equal(wide.x_test, wide1.x_test) and not torch.equal(wide.x_train, wide1.x_train)
    assert wide.y_test.bincount(minlength=10).min() >= 70  # every class well represented
    rows = lambda x: {tuple(r) for r in x.flatten(1).numpy().round(4).tolist()}  # noqa: E731
    assert not rows(wide.x_test) & rows(torch.cat([wide.x_train, wide.x_val]))  # no duplicate crosses the split
    assert len(rows(torch.cat([wide.x_train, wide.x_val, wide.x_test]))) == len(rows(torch.cat(
        [small.x_train, small.x_val, small.x_test])))  # the same examples as digits


def test_arrests_sensitive_features_match_the_inputs(cache) -> None:
    s = load_dataset("arrests", 0)
    assert s.info.sensitive == ("colour", "sex")
    # one-hot colour columns sit right after the 3 standardized numerics: (Black, White)
    assert torch.equal(s.x_train[:, 4].long(), s.sensitive["train"]["colour"])


def test_unknown_dataset_is_named() -> None:
    with pytest.raises(UnknownEntry, match="imagenet"):
        load_dataset("imagenet")


# --- downloadable: offline failures and local fixtures laid out like the real sources -------------
@pytest.mark.parametrize("name", DOWNLOADABLE)
def test_missing_downloadable_dataset_says_what_to_fetch(name: str, tmp_path, monkeypatch, cache) -> None:
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable, match=str(tmp_path / "empty")):
        DATASETS.get(name)(0, tmp_path / "empty")


def write_idx(path: pathlib.Path, a: np.ndarray) -> None:
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    path.write_bytes(gzip.compress(head + a.astype(np.uint8).tobytes()))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_style_idx_folder_loads(name: str, folder: str, tmp_path, cache) -> None:
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(0)
    train_x, test_x = g.integers(0, 256, (30, 28, 28)), g.integers(0, 256, (10, 28, 28))
    write_idx(raw / "train-images-idx3-ubyte.gz", train_x)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    s = DATASETS.get(name)(0, tmp_path)
    assert_valid_splits(s, 10)
    assert torch.equal(s.x_test[:, 0], torch.from_numpy(test_x).float() / 255)  # official test set kept
    assert len(s.y_train) + len(s.y_val) == 30


def write_cifar(folder: pathlib.Path, files: dict[str, int], label_key: str, n_classes: int) -> np.ndarray:
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    last = None
    for f, n in files.items():
        data = g.integers(0, 256, (n, 3072)).astype(np.uint8)
        with open(folder / f, "wb") as fh:  # the real format: a protocol-2 pickled dict with bytes keys
            pickle.dump({b"data": data, label_key.encode(): list(range(n)) if n_classes >= n else
                         [i % n_classes for i in range(n)], b"batch_label": b"x"}, fh, protocol=2)
        last = data
    return last


@pytest.mark.parametrize("name,folder,files,key,n_classes", [
    ("cifar10", "cifar-10-batches-py", {**{f"data_batch_{i}": 4 for i in range(1, 6)}, "test_batch": 5}, "labels", 10),
    ("cifar100", "cifar-100-python", {"train": 12, "test": 5}, "fine_labels", 100),
])
def test_cifar_batches_load(name, folder, files, key, n_classes, tmp_path, cache) -> None:
    test = write_cifar(tmp_path / folder, files, key, n_classes)
    s = DATASETS.get(name)(0, tmp_path)
    assert_valid_splits(s, n_classes)
    assert torch.equal(s.x_test, torch.from_numpy(test.reshape(-1, 3, 32, 32)).float() / 255)


def test_a_cifar_batch_that_runs_code_is_refused(tmp_path, cache) -> None:
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    write_cifar(tmp_path / "cifar-100-python", {"train": 3, "test": 2}, "fine_labels", 100)
    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DatasetUnavailable, match="refusing"):
        DATASETS.get("cifar100")(0, tmp_path)
    assert not marker.exists()


def test_svhn_mat_files_load(tmp_path, cache) -> None:
    import scipy.io

    g = np.random.default_rng(0)
    for f, n in (("train_32x32.mat", 12), ("test_32x32.mat", 4)):
        scipy.io.savemat(tmp_path / f, {"X": g.integers(0, 256, (32, 32, 3, n)).astype(np.uint8),
                                        "y": (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)})
    s = DATASETS.get("svhn")(0, tmp_path)
    assert_valid_splits(s, 10)
    assert torch.equal(s.y_test, torch.tensor([1, 2, 3, 4]))


def write_openml_adult(home: pathlib.Path, rows: list[tuple]) -> None:
    """The files sklearn's fetch_openml(data_id=1590, data_home=home) caches: gzipped API JSON responses
    and the gzipped ARFF, under openml.org/<url path>.gz."""
    import hashlib
    import json

    cols = [("age", "numeric"), ("workclass", "{Private,State-gov}"), ("race", "{White,Black}"),
            ("sex", "{Male,Female}"), ("hours-per-week", "numeric"), ("class", "{<=50K,>50K}")]
    arff = "@relation adult\n" + "".join(f"@attribute '{n}' {t}\n" for n, t in cols) + "@data\n" + \
        "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    base = home / "openml.org"
    api = base / "api" / "v1" / "json" / "data"

    def put(path: pathlib.Path, payload: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(payload))

    put(api / "1590.gz", json.dumps({"data_set_description": {
        "id": "1590", "name": "adult", "version": "2", "format": "ARFF", "status": "active", "description": "fixture",
        "url": "https://www.openml.org/data/v1/download/1595261/adult.arff", "default_target_attribute": "class",
        "md5_checksum": hashlib.md5(arff.encode()).hexdigest()}}).encode())
    put(api / "features" / "1590.gz", json.dumps({"data_features": {"feature": [
        {"index": str(i), "name": n, "data_type": "numeric" if t == "numeric" else "nominal",
         "nominal_value": [] if t == "numeric" else t.strip("{}").split(","), "is_target": str(n == "class").lower(),
         "is_ignore": "false", "is_row_identifier": "false", "number_of_missing_values": "0"}
        for i, (n, t) in enumerate(cols)]}}).encode())
    put(api / "qualities" / "1590.gz", json.dumps({"data_qualities": {"quality": [
        {"name": "NumberOfInstances", "value": str(len(rows))}]}}).encode())
    put(base / "data" / "v1" / "download" / "1595261" / "adult.arff.gz", arff.encode())


def test_adult_loads_from_an_openml_cache(tmp_path, monkeypatch, cache) -> None:
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    rows = [(20 + i, ("Private", "State-gov")[i % 2], ("White", "Black")[i % 3 == 0], ("Male", "Female")[i % 2],
             30 + i, ("<=50K", ">50K")[i % 4 == 0]) for i in range(20)]
    write_openml_adult(tmp_path / "openml", rows)
    s = DATASETS.get("adult")(0, tmp_path)
    assert_valid_splits(s, 2)
    assert s.info.sensitive == ("race", "sex")
    y = torch.cat([s.y_train, s.y_val, s.y_test])
    assert int(y.sum()) == 5  # rows 0, 4, 8, 12, 16 earn >50K
