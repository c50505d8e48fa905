"""WeightNetPredictor: fitting (an ensemble of WeightNetModel members, early stopping on part of the
validation set), prediction, recalibration and split-conformal intervals (weightnet.conformal), and
checkpoint I/O. The network itself is weightnet.network.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import ZooError
from core.hashing import code_version
from weightnet.canonical import spec_key
from weightnet.config import WeightNetConfig
from weightnet.conformal import (Conformal, Novelty, clip_to_bounds, identity_calibration, linear_calibration,
                                 reference_subset, split_calibration)
from weightnet.data import ZooSample
from weightnet.network import Collated, Handles, WeightNetModel, buckets, collate
from weightnet.pipeline import TokenPipeline
from weightnet.probes import ProbeRunner
from weightnet.tokenizers import Tokens

Progress = Callable[[int, int], None]


# --- the predictor ---------------------------------------------------------------------------------
class WeightNetPredictor:
    """weightnet.predictor.Predictor + predict_interval (split conformal on a calibration part of the
    validation set that neither training, early stopping nor recalibration sees: weightnet.conformal)."""

    name = "weightnet"

    def __init__(self, config: WeightNetConfig | None = None, device: str = "cpu", pipeline: TokenPipeline | None = None):
        self.config = config or WeightNetConfig()
        self.device = device
        self.pipeline = pipeline or TokenPipeline(self.config.tokenizer)
        self.targets: list[str] = []
        self.model: WeightNetModel | None = None  # the first ensemble member (embeddings, attention)
        self.members: list[WeightNetModel] = []  # predictions average every member
        self.target_mean = torch.zeros(0)
        self.target_std = torch.ones(0)
        self.conformal = Conformal()  # calibration scores (split conformal)
        self.novelty: Novelty | None = None  # distance to the training models in the head's input space
        self.seen_ids: tuple[str, ...] = ()  # models the fit used (training + early stopping/recalibration)
        self.seen_archs: tuple[str, ...] = ()  # their architectures (``unseen_view`` reads any other differently)
        self.runner = ProbeRunner(self.config.probe_max_flops)
        self.probe_shape: tuple[int, ...] | None = None
        self.probe_out = 0
        self.calibration = torch.zeros(0, 2)  # (n_targets, 2): prediction -> a * prediction + b
        self.history: list[dict] = []

    # -- helpers --
    def _labels(self, samples: Sequence[ZooSample]) -> torch.Tensor:
        return torch.tensor([[s.labels.get(t, float("nan")) for t in self.targets] for s in samples],
                            dtype=torch.float32).reshape(len(samples), len(self.targets))

    def _probe_setup(self, handles: Handles) -> None:
        """The probes' input space: the most common input shape among rebuildable training models, and
        its output width (models elsewhere get no probe tokens)."""
        self.probe_shape, self.probe_out = None, 0
        shapes = [h.input_shape for h in handles if h is not None]
        if not self.config.probes or not shapes:
            return
        self.probe_shape = max(set(shapes), key=shapes.count)
        self.probe_out = self.runner.out_dim(next(h for h in handles if h is not None and h.input_shape == self.probe_shape))

    def _views(self, samples: Sequence[ZooSample]) -> torch.Tensor | None:
        """(N,) bool: read from probe tokens alone (``unseen_view="probes"`` and an architecture the fit
        never saw), or None when no model is."""
        if self.config.unseen_view != "probes" or not self.seen_archs:
            return None
        only = torch.tensor([s.arch not in self.seen_archs for s in samples], dtype=torch.bool)
        return only if bool(only.any()) else None

    def _new_model(self, n_summary: int) -> "WeightNetModel":
        m = WeightNetModel(self.config, len(self.targets), n_summary, self.probe_shape, self.probe_out).to(self.device)
        m.runner = self.runner
        return m

    def _batch(self, toks: Sequence[Tokens], model: "WeightNetModel | None" = None) -> dict[str, torch.Tensor]:
        model = model or self.model
        width = model.n_summary if model is not None else 0
        return {k: v.to(self.device) for k, v in collate(toks, width).items()}

    def _loss(self, reg: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = (y - self.target_mean.to(y.device)) / self.target_std.to(y.device)
        ok = ~torch.isnan(z)
        weights = dict(self.config.loss_weights)
        w = torch.tensor([float(weights.get(t, 1.0)) for t in self.targets], device=y.device).expand_as(z)
        fn = F.huber_loss if self.config.loss == "huber" else F.mse_loss
        per = fn(reg, torch.nan_to_num(z), reduction="none")
        loss = (per * w * ok).sum() / ok.sum().clamp_min(1)
        if self.config.rank_loss > 0 and reg.shape[0] > 1:
            # pairwise logistic loss on every ordered pair (i, j) with z_i > z_j, per target: (B, B, T)
            dz = z[:, None] - z[None, :]
            dp = reg[:, None] - reg[None, :]
            pair = (dz > 0) & ok[:, None] & ok[None, :]
            rl = F.softplus(-dp) * pair * w[:1]
            loss = loss + self.config.rank_loss * rl.sum() / pair.sum().clamp_min(1)
        return loss

    # -- training --
    def prepare(self, train: Sequence[ZooSample]) -> None:
        """Settle what depends on the training set before tokenizing: ``summary="auto"`` becomes ``layers``
        when every training model has one tensor layout (StatNN's setting, where layer i is the same
        layer in every model) and ``pooled`` otherwise (a depth-free summary that lines up across
        architectures; measured in bench/weightnet_quality.py); then the alignment references."""
        tok = self.config.tokenizer
        if tok.summary == "auto":
            kind = "layers" if len({spec_key(s.spec) for s in train}) <= 1 else "pooled"
            self.config = dataclasses.replace(self.config, tokenizer=dataclasses.replace(tok, summary=kind))
            self.pipeline = TokenPipeline(self.config.tokenizer, self.pipeline.references)
        self.pipeline.fit_references(train)

    def fit(self, train: Sequence[ZooSample], val: Sequence[ZooSample], targets: Sequence[str], seed: int | None = None,
            progress: Progress | None = None) -> None:
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        if not train:
            raise ZooError("WeightNet needs at least one training sample")
        self.targets = list(targets)
        self.prepare(train)
        cfg = self.config
        val, calibration = split_calibration(val, seed)
        self.seen_ids = tuple(s.model_id for s in list(train) + list(val))
        self.seen_archs = tuple(sorted({s.arch for s in list(train) + list(val)}))
        tr_tok, va_tok = self.pipeline.many(train), self.pipeline.many(val)
        tr_h, va_h = self.runner.handles(train), self.runner.handles(val)
        self._probe_setup(tr_h)
        y_tr, y_va = self._labels(train), self._labels(val)
        self.target_mean = torch.nanmean(y_tr, 0).nan_to_num(0.0)
        std = torch.tensor([float(np.nanstd(y_tr[:, j].numpy())) if y_tr.shape[0] > 1 else 1.0
                            for j in range(len(self.targets))])
        self.target_std = torch.where(torch.isfinite(std) & (std > 1e-8), std, torch.ones_like(std))
        self.history = []
        self.calibration = identity_calibration(len(self.targets))
        # early stopping reads a seeded subset of at most val_max validation models (bounded cost)
        keep = sorted(torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))[:cfg.val_max].tolist())
        stop = ([va_tok[i] for i in keep], [va_h[i] for i in keep])
        tr_all = Collated(tr_tok, max(t.summary.numel() for t in tr_tok))  # padded once, sliced per step
        self.members = [self._fit_member(seed + 1000 * k, k, (tr_tok, tr_h, tr_all), stop, y_tr, y_va[keep], progress)
                        for k in range(cfg.ensemble)]
        self.model = self.members[0]
        if val and cfg.calibrate:  # calibration is still the identity here
            self.calibration = linear_calibration(self._predict_tokens(va_tok, va_h), y_va)
        # intervals widen with the distance to the training models in the representation the heads read
        # (normalized split conformal, weightnet.conformal): a fixed function of the fit, so still valid
        self.novelty = None
        if len(train) >= 2:
            ref = reference_subset(len(train), seed)
            emb = self._predict_tokens([tr_tok[i] for i in ref], [tr_h[i] for i in ref], embed=True)[1]
            self.novelty = Novelty.fit(emb.numpy(), seed)
        self.conformal = Conformal()
        if calibration:  # scores on models no step of the fit has seen
            y_cal = self._labels(calibration).numpy().astype(np.float64)
            pred, scale = self._predict_scaled(calibration)
            self.conformal = Conformal.fit(pred, {t: y_cal[:, j] for j, t in enumerate(self.targets)},
                                           [s.model_id for s in calibration], scale)

    def _fit_member(self, seed: int, k: int, tr: tuple[Sequence[Tokens], Handles, Collated],
                    va: tuple[Sequence[Tokens], Handles], y_tr: torch.Tensor, y_va: torch.Tensor,
                    progress: Progress | None) -> "WeightNetModel":
        """One ensemble member from its own seed (init, probes, batch order, dropout), trained for
        min(epochs passes, max_examples examples) in ``epochs`` rounds with a validation check after each;
        the best validated state is kept, and ``patience`` rounds without improvement stop the fit."""
        cfg = self.config
        (tr_tok, tr_h, tr_all), (va_tok, va_h) = tr, va
        with torch.random.fork_rng(devices=[]):  # module init draws from the global RNG: seed it, then restore
            torch.manual_seed(seed)
            model = self._new_model(tr_all.data["summary"].shape[1])
        if model.n_summary:
            sums = tr_all.data["summary"]
            model.sum_mean.copy_(sums.mean(0))
            std = sums.std(0, correction=0)
            model.sum_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))  # constant columns: scale 1
        allf = torch.cat([t.features for t in tr_tok])
        model.feat_mean.copy_(allf.mean(0))
        model.feat_std.copy_(allf.std(0, correction=0).clamp_min(1e-6))
        gen = torch.Generator().manual_seed(seed)
        views = torch.Generator().manual_seed(seed + 7919)  # its own stream: view_dropout=0 keeps every other draw
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        lengths = [len(t) for t in tr_tok]
        steps_per_epoch = len(buckets(lengths, cfg.batch_size))
        total = max(1, min(cfg.epochs * steps_per_epoch, math.ceil(cfg.max_examples / cfg.batch_size)))
        rounds = min(cfg.epochs, total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        best, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
        stream = self._batches(lengths, gen)
        with torch.random.fork_rng(devices=[]):  # dropout masks from the member's seed
            torch.manual_seed(seed)
            for r in range(rounds):
                model.train()
                tr_loss, seen = 0.0, 0
                for _ in range(total * (r + 1) // rounds - total * r // rounds):  # this round's share of the steps
                    idx = next(stream)
                    b = {key: v.to(self.device) for key, v in tr_all.batch(idx).items()}
                    if cfg.view_dropout > 0:
                        b["probe_only"] = torch.rand(len(idx), generator=views) < cfg.view_dropout
                    reg = model(b, [tr_h[i] for i in idx])
                    loss = self._loss(reg, y_tr[idx].to(self.device))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    tr_loss, seen = tr_loss + float(loss.detach()) * len(idx), seen + len(idx)
                tr_loss /= max(1, seen)
                va_loss = self.evaluate_loss(va_tok, y_va, model, va_h) if va_tok else tr_loss
                self.history.append({"member": k, "epoch": r, "train_loss": tr_loss, "val_loss": va_loss,
                                     "examples": seen})
                if progress is not None:
                    progress(k * rounds + r + 1, cfg.ensemble * rounds)
                if va_loss < best - 1e-6:
                    best, best_state, stale = va_loss, copy.deepcopy(model.state_dict()), 0
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
        model.load_state_dict(best_state)
        return model.eval()

    def _batches(self, lengths: Sequence[int], gen: torch.Generator) -> Iterator[list[int]]:
        """Endless training batches: one shuffled, length-bucketed pass over the training set after another."""
        while True:
            yield from buckets(lengths, self.config.batch_size, gen)

    @torch.no_grad()
    def evaluate_loss(self, toks: Sequence[Tokens], y: torch.Tensor, model: "WeightNetModel | None" = None,
                      handles: Handles | None = None) -> float:
        """Loss of one member (default: the ensemble's mean outputs) on tokens (+ probe handles) with labels y."""
        members = [model] if model is not None else (self.members or [self.model])
        total = 0.0
        for idx in buckets([len(t) for t in toks], self.config.batch_size):
            b = self._batch([toks[i] for i in idx], members[0])  # members share the summary width
            h = [handles[i] for i in idx] if handles is not None else None
            reg = torch.stack([m.eval()(b, h) for m in members]).mean(0)
            total += float(self._loss(reg, y[idx].to(self.device))) * len(idx)
        return total / max(1, len(toks))

    def mean_baseline_loss(self, samples: Sequence[ZooSample]) -> float:
        """Loss of always predicting the training mean (for 'well below the mean' checks)."""
        y = self._labels(samples)
        reg = torch.zeros(len(samples), len(self.targets))
        return float(self._loss(reg, y))

    # -- prediction --
    @torch.no_grad()
    def _predict_tokens(self, toks: Sequence[Tokens], handles: Handles | None = None,
                        batch_size: int | None = None, embed: bool = False, probe_only: torch.Tensor | None = None):
        """(N, n_targets) de-standardized, recalibrated predictions (not yet clipped to property ranges);
        with ``embed`` also the first member's (N, d_head) head inputs, from the same pass. ``probe_only``
        (N,) bool: models read from their probe tokens alone (``_views``)."""
        if self.model is None:
            raise ZooError("WeightNet is not trained (call fit or load a checkpoint)")
        members = self.members or [self.model]
        out = torch.empty(len(toks), len(self.targets))
        emb = torch.empty(len(toks), members[0].regress.in_features) if embed else None
        for idx in buckets([len(t) for t in toks], batch_size or max(64, self.config.batch_size)):
            # tokens are collated once and shared: members differ only in weights. A plain loop over
            # members: torch.func.vmap over stacked members measured 1.4x slower (no batching rule for
            # CPU flash attention), and the per-member Python overhead is ~1% at batch 256
            b = self._batch([toks[i] for i in idx], members[0])
            if probe_only is not None:
                b["probe_only"] = probe_only[idx].to(self.device)
            h = [handles[i] for i in idx] if handles is not None else None
            z = [m.eval().head_input(b, h) for m in members]
            reg = torch.stack([m.regress(zi).float().cpu() for m, zi in zip(members, z)]).mean(0)
            out[idx] = reg * self.target_std + self.target_mean
            if emb is not None:
                emb[idx] = z[0].float().cpu()
        out = out * self.calibration[:, 0] + self.calibration[:, 1]
        return (out, emb) if embed else out

    def _read(self, samples: Sequence[ZooSample], embed: bool = False):
        """``_predict_tokens`` of samples: their tokens, probe handles and view (``_views``), the one way
        every public prediction reads a model."""
        return self._predict_tokens(self.pipeline.many(samples), self.runner.handles(samples), embed=embed,
                                    probe_only=self._views(samples))

    def predict(self, samples: Sequence[ZooSample]) -> dict[str, np.ndarray]:
        if not samples:
            return {t: np.zeros(0) for t in self.targets}
        pred = self._read(samples).numpy()
        return {t: clip_to_bounds(t, pred[:, j].astype(np.float64)) for j, t in enumerate(self.targets)}

    def _predict_scaled(self, samples: Sequence[ZooSample]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Predictions and each model's novelty scale (None without a novelty reference), in one pass."""
        if not samples:
            return {t: np.zeros(0) for t in self.targets}, (np.zeros(0) if self.novelty else None)
        pred, emb = self._read(samples, embed=True)
        scale = self.novelty.scale(emb.numpy()) if self.novelty is not None else None
        return {t: clip_to_bounds(t, pred[:, j].numpy().astype(np.float64)) for j, t in enumerate(self.targets)}, scale

    def embed(self, samples: Sequence[ZooSample]) -> np.ndarray:
        """(N, d_head) pooled encodings (+ summary embeddings) of the first member, the representation its
        heads read."""
        if not samples:
            return np.zeros((0, 0))
        return self._read(samples, embed=True)[1].numpy()

    def attention_by_layer(self, samples: Sequence[ZooSample]) -> dict[str, float]:
        """``kind@depth`` -> share of the encoder's attention on that layer (see ``weightnet.attention``)."""
        from weightnet.attention import attention_by_layer

        return attention_by_layer(self, samples)

    def interval_width(self, prop: str, alpha: float) -> float:
        """The ceil((n+1)(1-alpha))-th smallest calibration score: the half-width before clipping, in units
        of a model's novelty scale when the scores are normalized; inf when the calibration set is too
        small for that rank (no finite interval)."""
        return self.conformal.radius(prop, alpha)

    def predict_with_intervals(self, samples: Sequence[ZooSample], alpha: float | None = None
                               ) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Predictions and (lo, hi) per property from one pass: prediction +- the conformal half-width
        (times the model's novelty scale when normalized), clipped to the property's range."""
        alpha = self.config.alpha if alpha is None else alpha
        pred, scale = self._predict_scaled(samples)
        return pred, self.conformal.intervals(pred, alpha, scale)

    def predict_interval(self, samples: Sequence[ZooSample], alpha: float | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(lo, hi) per property (see ``predict_with_intervals``)."""
        return self.predict_with_intervals(samples, alpha)[1]

    # -- checkpoints --
    def state(self) -> dict:
        assert self.model is not None
        return {"state_dict": self.model.state_dict(), "members": [m.state_dict() for m in self.members[1:]],
                "config": self.config.to_dict(), "targets": list(self.targets),
                "target_mean": self.target_mean, "target_std": self.target_std, "conformal": self.conformal.state(),
                "novelty": self.novelty.state() if self.novelty is not None else {},
                "calibration": self.calibration, "seen_ids": list(self.seen_ids), "seen_archs": list(self.seen_archs),
                "probe_shape": list(self.probe_shape or []), "probe_out": self.probe_out,
                "references": self.pipeline.references, "code_version": code_version(), "history": self.history}

    def save(self, path) -> None:
        torch.save(self.state(), path)

    @classmethod
    def load(cls, path, device: str = "cpu") -> "WeightNetPredictor":
        try:
            ck = torch.load(path, weights_only=True, map_location=device)
        except (OSError, RuntimeError) as e:
            raise ZooError(f"cannot load WeightNet checkpoint {path}: {e}") from None
        config = dict(ck["config"])
        if config.pop("thresholds", ()):  # older checkpoints name the removed classification heads (unused: empty)
            raise ZooError(f"WeightNet checkpoint {path} uses threshold classification heads, which were removed")
        config.setdefault("probe_latent", 0)  # older checkpoints learned their probes directly
        config.setdefault("probe_readout", False)  # and had no probe readout
        cfg = WeightNetConfig.from_dict(config)
        p = cls(cfg, device, TokenPipeline(cfg.tokenizer, ck.get("references")))
        p.targets = list(ck["targets"])
        p.target_mean, p.target_std = ck["target_mean"], ck["target_std"]
        p.conformal = Conformal.from_state(ck.get("conformal", {}))  # older checkpoints: no valid residuals
        p.novelty = Novelty.from_state(ck.get("novelty"))  # older checkpoints: plain intervals
        p.seen_ids = tuple(ck.get("seen_ids", ()))
        p.seen_archs = tuple(ck.get("seen_archs", ()))  # older checkpoints: every model read in full
        p.calibration = ck.get("calibration", identity_calibration(len(p.targets)))
        p.history = list(ck.get("history", []))
        p.probe_shape, p.probe_out = tuple(ck.get("probe_shape", ())) or None, int(ck.get("probe_out", 0))
        n_summary = int(ck["state_dict"].get("sum_mean", torch.zeros(0)).numel())
        p.model = p._new_model(n_summary)
        p.model.load_state_dict(ck["state_dict"])
        p.members = [p.model.eval()]
        for sd in ck.get("members", []):
            m = p._new_model(n_summary)
            m.load_state_dict(sd)
            p.members.append(m.eval())
        return p
