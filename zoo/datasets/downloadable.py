"""Datasets fetched once from the internet: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
``svhn`` (torchvision's download code and folder layout) and ``adult`` (OpenML via sklearn).

Files are read from ``data_root(root)`` in the layout the real sources use (torchvision's
``MNIST/raw/*-idx?-ubyte[.gz]``, ``cifar-10-batches-py/``, ``cifar-100-python/``, ``*_32x32.mat``;
sklearn's OpenML cache ``openml/openml.org/...``). When they are missing, torchvision / sklearn download
them unless ``ZOO_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``); failing that, ``DatasetUnavailable`` says what
to fetch and where to put it. CIFAR batches are pickles: they are read with an unpickler that only
admits numpy arrays, so a tampered batch cannot run code.
"""
from __future__ import annotations

import gzip
import io
import math
import pathlib
import pickle

import numpy as np
import torch

from core import settings
from core.errors import DatasetUnavailable
from zoo.datasets import DATASETS, DatasetInfo, Splits, data_root, make_splits


def offline() -> bool:
    return settings.offline()


def _ensure(name: str, root: pathlib.Path, present, download, what: str) -> None:
    """Run ``download()`` when ``present()`` is false and we may; then insist the files are there."""
    if present():
        return
    if not offline():
        try:
            download()
        except Exception as e:  # network errors of every kind: the message below says what to do
            reason = f"download failed ({type(e).__name__}: {e})"
        else:
            reason = "download finished but the files are still missing"
        if present():
            return
    else:
        reason = "offline (ZOO_OFFLINE/HF_HUB_OFFLINE set)"
    raise DatasetUnavailable(f"dataset {name!r} is not on disk and cannot be fetched here: {reason}. "
                             f"Fetch {what} and put it under {root}")


# --- MNIST-style idx files -----------------------------------------------------------------------
def _idx(path: pathlib.Path) -> np.ndarray:
    """An idx file (or its .gz): big-endian magic (0, 0, dtype=8 for uint8, ndim), then dims, then data."""
    raw = path.read_bytes() if path.exists() else gzip.decompress(path.with_name(path.name + ".gz").read_bytes())
    if raw[:3] != b"\x00\x00\x08":
        raise DatasetUnavailable(f"{path} is not a uint8 idx file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise DatasetUnavailable(f"{path} declares shape {dims} but holds {data.size} values (truncated?)")
    return data.reshape(dims)


def _mnist_like(name: str, folder: str, tv_class: str, seed: int, root: pathlib.Path | None) -> Splits:
    import torchvision.datasets as tvd

    base = data_root(root)
    raw = base / folder / "raw"
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    present = lambda: all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in files)  # noqa: E731
    _ensure(name, base, present, lambda: getattr(tvd, tv_class)(str(base), train=True, download=True),
            f"{', '.join(f + '.gz' for f in files)} (torchvision {tv_class} mirrors)", )
    xs = [_idx(raw / f) for f in files]
    x = torch.from_numpy(np.concatenate([xs[0], xs[2]])).float().div(255).unsqueeze(1)  # (70000, 1, 28, 28)
    y = torch.from_numpy(np.concatenate([xs[1], xs[3]]).astype(np.int64))
    info = DatasetInfo(name, "image", tuple(x.shape[1:]), 10, (0.0, 1.0))
    return make_splits(info, x, y, seed, n_test=len(xs[3]))


@DATASETS.register("mnist")
def mnist(seed: int, root: pathlib.Path | None) -> Splits:
    return _mnist_like("mnist", "MNIST", "MNIST", seed, root)


@DATASETS.register("fashion_mnist")
def fashion_mnist(seed: int, root: pathlib.Path | None) -> Splits:
    return _mnist_like("fashion_mnist", "FashionMNIST", "FashionMNIST", seed, root)


# --- CIFAR (python pickles) --------------------------------------------------------------------
class _ArraysOnly(pickle.Unpickler):
    """Admits only what CIFAR batches contain: numpy arrays, dtypes, and builtin containers."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # protocol-2 pickles spell bytes as _codecs.encode(str, "latin1")

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _batch(path: pathlib.Path) -> dict:
    try:
        return _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DatasetUnavailable(f"{path} is not a CIFAR batch ({e})") from None


def _cifar(name: str, folder: str, train: list[str], test: list[str], label_key: bytes, n_classes: int,
           tv_class: str, seed: int, root: pathlib.Path | None) -> Splits:
    import torchvision.datasets as tvd

    base = data_root(root)
    present = lambda: all((base / folder / f).exists() for f in train + test)  # noqa: E731
    _ensure(name, base, present, lambda: getattr(tvd, tv_class)(str(base), train=True, download=True),
            f"the python version of {tv_class} ({folder}/ with {', '.join(train + test)})")
    batches = [_batch(base / folder / f) for f in train + test]
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)  # rows are R, G, B planes
    y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    n_test = sum(len(b[label_key]) for b in batches[len(train):])
    info = DatasetInfo(name, "image", (3, 32, 32), n_classes, (0.0, 1.0))
    return make_splits(info, torch.from_numpy(x).float().div(255), torch.from_numpy(y), seed, n_test=n_test)


@DATASETS.register("cifar10")
def cifar10(seed: int, root: pathlib.Path | None) -> Splits:
    return _cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                  b"labels", 10, "CIFAR10", seed, root)


@DATASETS.register("cifar100")
def cifar100(seed: int, root: pathlib.Path | None) -> Splits:
    return _cifar("cifar100", "cifar-100-python", ["train"], ["test"], b"fine_labels", 100, "CIFAR100", seed, root)


@DATASETS.register("svhn")
def svhn(seed: int, root: pathlib.Path | None) -> Splits:
    import scipy.io
    import torchvision.datasets as tvd

    base = data_root(root)
    files = ("train_32x32.mat", "test_32x32.mat")
    _ensure("svhn", base, lambda: all((base / f).exists() for f in files),
            lambda: tvd.SVHN(str(base), split="train", download=True), f"{', '.join(files)} (SVHN cropped digits)")
    mats = [scipy.io.loadmat(base / f) for f in files]  # X: (32, 32, 3, N) uint8; y: (N, 1) with 10 meaning 0
    x = np.concatenate([m["X"].transpose(3, 2, 0, 1) for m in mats])
    y = np.concatenate([m["y"].reshape(-1).astype(np.int64) % 10 for m in mats])
    info = DatasetInfo("svhn", "image", (3, 32, 32), 10, (0.0, 1.0))
    return make_splits(info, torch.from_numpy(x).float().div(255), torch.from_numpy(y), seed,
                       n_test=mats[1]["y"].shape[0])


# --- adult (OpenML) ----------------------------------------------------------------------------
ADULT_ID = 1590  # "adult", version 2 on OpenML


@DATASETS.register("adult")
def adult(seed: int, root: pathlib.Path | None) -> Splits:
    """UCI Adult via ``sklearn.datasets.fetch_openml(data_id=1590)``, cached under ``<root>/openml/openml.org``.

    Target: income >50K. Inputs: numeric columns standardized, categoricals one-hot. Sensitive
    features ``race`` (White=1, else 0) and ``sex`` (Male=1, Female=0).
    """
    from sklearn.datasets import fetch_openml

    home = data_root(root)  # sklearn caches under <data_home>/openml/openml.org/<url path>.gz
    cached = home / "openml" / "openml.org" / "api" / "v1" / "json" / "data" / f"{ADULT_ID}.gz"
    frame = {}

    def fetch() -> None:
        frame["df"] = fetch_openml(data_id=ADULT_ID, data_home=str(home), as_frame=True, parser="pandas").frame

    if cached.exists() or not offline():
        try:
            fetch()
        except Exception as e:  # network / cache errors alike
            raise DatasetUnavailable(f"dataset 'adult' cannot be loaded ({type(e).__name__}: {e}). Fetch OpenML "
                                     f"dataset {ADULT_ID} with sklearn.datasets.fetch_openml(data_id={ADULT_ID}, "
                                     f"data_home='{home}') on a machine with network and copy {home / 'openml'}") from None
    else:
        raise DatasetUnavailable(f"dataset 'adult' is not on disk and cannot be fetched here (offline). Fetch OpenML "
                                 f"dataset {ADULT_ID} with sklearn.datasets.fetch_openml(data_id={ADULT_ID}, "
                                 f"data_home='{home}') and copy {home / 'openml'} here")
    df = frame["df"].dropna().reset_index(drop=True)
    target = df.columns[-1] if "class" not in df.columns else "class"
    y = torch.tensor(df[target].astype(str).str.contains(">50K").to_numpy(), dtype=torch.int64)
    feats = df.drop(columns=[target])
    cols = []
    for c in feats.columns:
        if feats[c].dtype.kind in "if":
            v = feats[c].to_numpy(dtype=np.float64)
            cols.append(((v - v.mean()) / (v.std() or 1.0))[:, None])
        else:
            cats = sorted(feats[c].astype(str).unique())
            cols.append(np.eye(len(cats))[np.searchsorted(cats, feats[c].astype(str).to_numpy())])
    x = torch.from_numpy(np.concatenate(cols, axis=1).astype(np.float32))
    groups = {"race": torch.tensor((feats["race"].astype(str) == "White").to_numpy(), dtype=torch.int64),
              "sex": torch.tensor((feats["sex"].astype(str) == "Male").to_numpy(), dtype=torch.int64)}
    lo, hi = math.floor(float(x.min())), math.ceil(float(x.max()))
    info = DatasetInfo("adult", "tabular", (x.shape[1],), 2, (float(lo), float(hi)), sensitive=("race", "sex"))
    return make_splits(info, x, y, seed, sensitive=groups)
