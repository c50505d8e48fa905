"""Fixed-length feature vectors from weights: global flattening and StatNN per-layer statistics,
plus the feature-matrix predictor (MLP or gradient boosting) both baselines share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from evaluation.baselines.base import ConformalMixin, Standardizer, fit_torch, mlp, one_thread, target_matrix
from weightnet.data import ZooSample
from weightnet.tokenizers import per_layer_stats


def flat_vector(s: ZooSample) -> np.ndarray:
    """Every trainable tensor (buffers excluded) flattened in spec order and concatenated."""
    parts = [s.state[p.name].detach().float().reshape(-1) for p in s.spec.params if p.role != "buffer"]
    return torch.cat(parts).numpy().astype(np.float64) if parts else np.zeros(0)


def statnn_vector(s: ZooSample) -> np.ndarray:
    """StatNN's features (Unterthiner et al. 2020): per layer in spec order, mean, variance and quantiles of
    its weights, then of its biases; the same statistics WeightNet's layer summary reads
    (``weightnet.tokenizers.per_layer_stats``, the one owner)."""
    return per_layer_stats(s.state, s.spec).reshape(-1)


def pad_matrix(vectors: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Zero-pad (or truncate) every vector to ``width`` columns."""
    out = np.zeros((len(vectors), width), dtype=np.float64)
    for i, v in enumerate(vectors):
        n = min(width, v.size)
        out[i, :n] = v[:n]
    return out


@dataclass(frozen=True)
class FeatureModelConfig:
    model: str = "mlp"  # mlp | gbt
    hidden: int = 128  # MLP width
    depth: int = 2  # MLP hidden layers
    dropout: float = 0.1
    epochs: int = 300
    lr: float = 1e-3
    batch_size: int = 32
    gbt_iter: int = 200  # HistGradientBoostingRegressor max_iter
    per_column: bool = True  # z-score each feature (statistics) or all with one scalar (raw weights)


class FeaturePredictor(ConformalMixin):
    """Standardized features -> MLP (torch) or one HistGradientBoostingRegressor per target."""

    def __init__(self, name: str, featurize: Callable[[ZooSample], np.ndarray], config: FeatureModelConfig,
                 device: str = "cpu") -> None:
        self.name, self.featurize, self.config, self.device = name, featurize, config, device
        self.targets: tuple[str, ...] = ()

    def _x(self, samples: Sequence[ZooSample]) -> np.ndarray:
        return self.xs(pad_matrix([self.featurize(s) for s in samples], self.width))

    def fit(self, train: Sequence[ZooSample], val: Sequence[ZooSample], targets: Sequence[str], seed: int) -> None:
        self.targets = tuple(targets)
        val, calibration = self._split_calibration(val, seed)
        raw = [self.featurize(s) for s in train]
        self.width = max(v.size for v in raw)
        xtr = pad_matrix(raw, self.width)
        self.xs = Standardizer(xtr, self.config.per_column)
        ytr = target_matrix(train, self.targets)
        self.ys = Standardizer(ytr)
        xtr, ytr = self.xs(xtr), self.ys(ytr)
        if self.config.model == "gbt":
            from sklearn.ensemble import HistGradientBoostingRegressor
            from threadpoolctl import threadpool_limits

            leaf = max(2, min(20, len(xtr) // 8))  # sklearn's default 20 cannot split a zoo of 32 models
            with threadpool_limits(1):  # OpenMP threads only add overhead on zoo-sized data (and on busy CPUs)
                self.models = [HistGradientBoostingRegressor(max_iter=self.config.gbt_iter, random_state=seed,
                                                             min_samples_leaf=leaf, early_stopping=False
                                                             ).fit(xtr, ytr[:, j])
                               for j in range(ytr.shape[1])]
        else:
            self.net = self._fit_mlp(xtr, ytr, self._x(val) if val else None,
                                     self.ys(target_matrix(val, self.targets)) if val else None, seed)
        self._calibrate(calibration, train, seed)

    def _fit_mlp(self, xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray | None, yva: np.ndarray | None, seed: int):
        c = self.config
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # parameter init from the seed, global RNG restored afterwards
            net = mlp(xtr.shape[1], ytr.shape[1], c.hidden, c.depth, c.dropout).to(self.device)
        data = {"train": (torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr, dtype=torch.float32))}
        if xva is not None:
            data["val"] = (torch.tensor(xva, dtype=torch.float32), torch.tensor(yva, dtype=torch.float32))

        def batches(split: str, g: torch.Generator):
            if split not in data:
                return
            x, y = data[split]
            order = torch.randperm(len(x), generator=g) if split == "train" else torch.arange(len(x))
            for i in range(0, len(x), c.batch_size):
                idx = order[i:i + c.batch_size]
                yield x[idx].to(self.device), y[idx].to(self.device)

        with torch.random.fork_rng():
            torch.manual_seed(seed)  # dropout masks
            return fit_torch(net, batches, lambda m, x: m(x), seed, epochs=c.epochs, lr=c.lr)

    def _representation(self, samples: Sequence[ZooSample]) -> np.ndarray:
        """(N, width) the standardized features the model reads."""
        return self._x(samples)

    def _predict_scaled(self, samples: Sequence[ZooSample]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        if not samples:  # featurize once for both the prediction and the novelty scale
            return self.predict(samples), (np.zeros(0) if self.novelty is not None else None)
        x = self._x(samples)
        return self._predict_x(x), (self.novelty.scale(x) if self.novelty is not None else None)

    def predict(self, samples: Sequence[ZooSample]) -> dict[str, np.ndarray]:
        if not samples:
            return {t: np.zeros(0) for t in self.targets}
        return self._predict_x(self._x(samples))

    def _predict_x(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.config.model == "gbt":
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                z = np.stack([m.predict(x) for m in self.models], axis=1)
        else:
            with torch.no_grad(), one_thread():
                z = self.net(torch.tensor(x, dtype=torch.float32, device=self.device)).cpu().double().numpy()
        y = self.ys.inverse(z)
        return self._bounded({t: y[:, j] for j, t in enumerate(self.targets)})
