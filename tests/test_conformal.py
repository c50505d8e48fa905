"""Split-conformal intervals (weightnet.conformal) for WeightNet and every baseline: the coverage rate
the theory gives is met over many seeded draws, the calibration models never influence the fit, and
bounded properties stay inside their range."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.predictors import PREDICTORS
from fixtures.eval_zoo import synthetic_samples
from weightnet.conformal import (NOVELTY_DIM, Conformal, Novelty, clip_to_bounds, conformal_rank, property_bounds,
                                 reference_subset, split_calibration)

LEARNED = [n for n, entry in PREDICTORS.items() if entry.learned]  # WeightNet and every learned baseline
FAST = {"nfn": {"epochs": 30}, "statnn-mlp": {"epochs": 60}, "flat-mlp": {"epochs": 60},
        "weightnet": {"d_model": 16, "heads": 2, "depth": 1, "epochs": 4, "ensemble": 1, "probes": 4}}


def _coverage(n_cal: int, alpha: float, draws: int, rank_shift: int = 0) -> float:
    """Mean test coverage over ``draws`` seeded draws: a fixed predictor (y_hat = x), labels y = x + noise
    with heavy-tailed noise, n_cal calibration and 50 test points per draw. ``rank_shift`` mimics an
    off-by-one implementation (the rank it uses is that much smaller)."""
    rng = np.random.default_rng(1234)
    covered = []
    for _ in range(draws):
        x = rng.normal(size=n_cal + 50)
        y = x + rng.standard_t(3, size=x.size)
        conf = Conformal.fit({"v": x[:n_cal]}, {"v": y[:n_cal]})
        if rank_shift:
            k = conformal_rank(n_cal, alpha) - rank_shift
            q = conf.residuals["v"][k - 1]
            lo, hi = x[n_cal:] - q, x[n_cal:] + q
        else:
            lo, hi = conf.interval("v", x[n_cal:], alpha)
        covered.append(np.mean((y[n_cal:] >= lo) & (y[n_cal:] <= hi)))
    return float(np.mean(covered))


def _exact_rate(n_cal: int, alpha: float, draws: int, n_test: int) -> tuple[float, float]:
    """(k / (n + 1), the standard error of a mean coverage over ``draws`` draws of ``n_test`` test points):
    per draw, coverage is Beta(k, n + 1 - k) distributed (one shared quantile) plus binomial noise."""
    k = conformal_rank(n_cal, alpha)
    expected = k / (n_cal + 1)
    var = k * (n_cal + 1 - k) / ((n_cal + 1) ** 2 * (n_cal + 2)) + expected * (1 - expected) / n_test
    return expected, math.sqrt(var / draws)


@pytest.mark.parametrize("n_cal,alpha", [(10, 0.1), (19, 0.1), (9, 0.2)])
def test_coverage_matches_the_split_conformal_rate(n_cal: int, alpha: float) -> None:
    # exchangeable continuous residuals: coverage is exactly k / (n + 1), k = ceil((n + 1)(1 - alpha))
    draws = 3000
    expected, se = _exact_rate(n_cal, alpha, draws, 50)
    got = _coverage(n_cal, alpha, draws)
    assert abs(got - expected) < 4 * se, (got, expected)
    # the test has the power to see an off-by-one rank (what ceil(n (1 - alpha)) gives for these n)
    wrong = _coverage(n_cal, alpha, draws, rank_shift=1)
    assert abs(wrong - expected) > 8 * se, (wrong, expected)


def _normalized_coverage(n_cal: int, alpha: float, draws: int, forget_scale: bool = False) -> tuple[float, float]:
    """Like ``_coverage`` with normalized scores: each point has a scale s = exp(u), u ~ U(-1.5, 1.5), and
    noise s * t_3, so plain residuals are far from identically distributed. Returns (mean coverage, mean
    coverage of the widest-scale quarter of test points). ``forget_scale`` mimics an implementation that
    normalizes the calibration scores but forgets to scale the test interval back."""
    rng = np.random.default_rng(99)
    covered, top = [], []
    for _ in range(draws):
        x = rng.normal(size=n_cal + 40)
        s = np.exp(rng.uniform(-1.5, 1.5, size=x.size))
        y = x + s * rng.standard_t(3, size=x.size)
        conf = Conformal.fit({"v": x[:n_cal]}, {"v": y[:n_cal]}, scale=s[:n_cal])
        test_scale = np.ones(40) if forget_scale else s[n_cal:]
        lo, hi = conf.interval("v", x[n_cal:], alpha, test_scale)
        inside = (y[n_cal:] >= lo) & (y[n_cal:] <= hi)
        covered.append(np.mean(inside))
        top.append(np.mean(inside[s[n_cal:] >= np.quantile(s[n_cal:], 0.75)]))
    return float(np.mean(covered)), float(np.mean(top))


@pytest.mark.parametrize("n_cal,alpha", [(19, 0.1), (9, 0.2)])
def test_normalized_scores_keep_the_split_conformal_rate(n_cal: int, alpha: float) -> None:
    # scores |y - y_hat| / s are exchangeable when s is fixed before calibration: coverage is k / (n + 1)
    # overall, and it holds for the widest-scale points too, where plain residual quantiles under-cover
    draws = 3000
    expected, se = _exact_rate(n_cal, alpha, draws, 40)
    got, top = _normalized_coverage(n_cal, alpha, draws)
    assert abs(got - expected) < 4 * se, (got, expected)
    assert abs(top - expected) < 0.03, (top, expected)
    wrong, wrong_top = _normalized_coverage(n_cal, alpha, draws, forget_scale=True)
    assert abs(wrong - expected) > 8 * se and wrong_top < expected - 0.15, (wrong, wrong_top)


def test_normalized_intervals_need_scales_and_scales_must_be_positive() -> None:
    conf = Conformal.fit({"v": np.zeros(4)}, {"v": np.array([1.0, 2.0, 3.0, 4.0])}, scale=np.array([1.0, 2.0, 1.0, 4.0]))
    assert conf.normalized and np.allclose(conf.residuals["v"], [1.0, 1.0, 1.0, 3.0])
    np.testing.assert_allclose(conf.interval("v", np.zeros(2), 0.5, np.array([1.0, 3.0]))[1], [1.0, 3.0])  # rank 3
    with pytest.raises(ValueError, match="novelty scale"):
        conf.interval("v", np.zeros(2), 0.5)
    with pytest.raises(ValueError, match="positive"):
        conf.interval("v", np.zeros(2), 0.5, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="not normalized"):
        Conformal.fit({"v": np.zeros(2)}, {"v": np.ones(2)}).interval("v", np.zeros(2), 0.5, np.ones(2))
    restored = Conformal.from_state(conf.state())
    assert restored.normalized and np.array_equal(restored.residuals["v"], conf.residuals["v"])


@pytest.mark.parametrize("width", [6, NOVELTY_DIM + 40])
def test_novelty_grows_with_distance_from_the_training_models(width: int) -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(size=(3000, width)) * np.linspace(0.5, 3.0, width)  # uneven scales: z-scored first
    nov = Novelty.fit(train, seed=0)
    assert len(nov.reference) == 2000 and (nov.projection is not None) == (width > NOVELTY_DIM)
    direction = rng.normal(size=width)
    direction /= np.linalg.norm(direction)
    fresh = rng.normal(size=(200, width)) * np.linspace(0.5, 3.0, width)
    scales = [float(np.median(nov.scale(fresh + shift * 3.0 * direction * np.linspace(0.5, 3.0, width))))
              for shift in (0.0, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(scales, scales[1:])), scales  # farther from the zoo: larger scale
    dup = nov.scale(train[:5])  # training models themselves: small, but never zero
    assert np.all(dup >= nov.floor) and nov.floor > 0
    again = Novelty.from_state(nov.state())
    np.testing.assert_array_equal(again.scale(fresh), nov.scale(fresh))
    with pytest.raises(ValueError, match="width"):
        nov.scale(fresh[:, :-1])
    assert reference_subset(3000, 0) == reference_subset(3000, 0) != reference_subset(3000, 1)


def test_normalized_intervals_cover_a_shifted_population_that_plain_ones_miss() -> None:
    """A predictor whose error grows with the distance from its training models (as WeightNet's does on a
    held-out family): calibration models come from the training distribution, test models from a shifted
    one. Plain split conformal under-covers the shifted models; normalized scores with the novelty scale
    stay near the nominal 0.9 without being wider on in-distribution models."""
    rng = np.random.default_rng(11)
    train = rng.normal(size=(1500, 8))
    nov = Novelty.fit(train, seed=0)

    def draw(n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, 8)) + shift
        return x, 0.02 * nov.scale(x) * rng.standard_t(4, size=n)  # the error, in label units

    xc, ec = draw(400, 0.0)
    plain = Conformal.fit({"v": np.zeros(400)}, {"v": ec})
    norm = Conformal.fit({"v": np.zeros(400)}, {"v": ec}, scale=nov.scale(xc))
    for shift, lo_cov in ((0.0, 0.86), (1.5, 0.86)):
        xt, et = draw(4000, shift)
        cov_norm = np.mean(np.abs(et) <= norm.interval("v", np.zeros(4000), 0.1, nov.scale(xt))[1])
        cov_plain = np.mean(np.abs(et) <= plain.interval("v", np.zeros(4000), 0.1)[1])
        assert lo_cov <= cov_norm <= 0.94, (shift, cov_norm)
        if shift:
            assert cov_plain < 0.75, cov_plain


def test_too_few_calibration_models_give_infinite_intervals() -> None:
    conf = Conformal.fit({"v": np.zeros(5)}, {"v": np.arange(5.0)})
    assert conformal_rank(5, 0.1) is None and conf.radius("v", 0.1) == math.inf  # ceil(6 * 0.9) = 6 > 5
    assert conf.radius("v", 0.2) == 4.0  # ceil(6 * 0.8) = 5: the largest residual
    assert conf.radius("missing", 0.2) == math.inf
    assert conformal_rank(9, 0.1) == 9  # (n + 1)(1 - alpha) = 9 exactly: float rounding must not make it 10


def test_bounds_and_clipping() -> None:
    assert property_bounds("test_accuracy") == (0.0, 1.0) and property_bounds("pgd_linf_2_255") == (0.0, 1.0)
    assert property_bounds("gen_gap_accuracy") == (-1.0, 1.0)
    assert property_bounds("test_loss") == (-math.inf, math.inf)
    np.testing.assert_array_equal(clip_to_bounds("test_accuracy", np.array([-0.2, 0.5, 1.3])), [0.0, 0.5, 1.0])
    conf = Conformal.fit({"test_accuracy": np.array([0.5, 0.5, 0.5])}, {"test_accuracy": np.array([0.4, 0.6, 0.7])})
    lo, hi = conf.interval("test_accuracy", np.array([0.05, 0.98, 1.4]), 0.25)  # radius 0.2 (rank 3)
    np.testing.assert_allclose(lo, [0.0, 0.78, 0.8])
    np.testing.assert_allclose(hi, [0.25, 1.0, 1.0])


def test_split_calibration_is_by_run_and_seeded() -> None:
    val = synthetic_samples("mlp", 12, torch.Generator().manual_seed(0))
    val = [type(s)(**{**s.__dict__, "run_id": f"run{i // 2}"}) for i, s in enumerate(val)]  # 2 checkpoints per run
    fit, cal = split_calibration(val, seed=0)
    assert len(cal) == 6 and {s.run_id for s in fit}.isdisjoint({s.run_id for s in cal})
    assert [s.model_id for s in split_calibration(val, seed=0)[1]] == [s.model_id for s in cal]
    assert split_calibration(val[:2], seed=0) == (val[:2], [])  # one run: nothing to calibrate on


def _with_shifted_labels(samples, ids, shift):
    return [type(s)(**{**s.__dict__, "labels": {k: v + shift for k, v in s.labels.items()}})
            if s.model_id in ids else s for s in samples]


def _make(name: str):
    return PREDICTORS.get(name).make(**FAST.get(name, {}))


@pytest.mark.parametrize("name", LEARNED)
def test_calibration_models_never_influence_the_fit(name: str) -> None:
    """Shifting the calibration models' labels by 100 leaves every point prediction unchanged (the fit
    never saw them: not in training, early stopping or recalibration) and widens the intervals. With the
    old scheme (one validation set for everything) early stopping / recalibration moved the predictions."""
    samples = synthetic_samples("mlp", 40, torch.Generator().manual_seed(5), shared_init=name == "flat-mlp")
    train, val, test = samples[:20], samples[20:32], samples[32:]
    a = _make(name)
    a.fit(train, val, ["norm0"], seed=0)
    cal_ids = set(a.conformal.calibration_ids)
    assert len(cal_ids) == 6 and cal_ids < {s.model_id for s in val}
    b = _make(name)
    b.fit(train, _with_shifted_labels(val, cal_ids, 100.0), ["norm0"], seed=0)
    np.testing.assert_array_equal(a.predict(test)["norm0"], b.predict(test)["norm0"])
    lo_a, hi_a = a.predict_interval(test, alpha=0.2)["norm0"]
    lo_b, hi_b = b.predict_interval(test, alpha=0.2)["norm0"]
    assert np.all(hi_b - lo_b > hi_a - lo_a + 150)  # residuals of ~100 now bound the interval
    assert np.all(np.isfinite(hi_a - lo_a))  # 6 calibration models suffice at alpha = 0.2 (rank 6)
    if name == "weightnet":
        assert cal_ids.isdisjoint(a.seen_ids)


def test_bounded_predictions_stay_in_range() -> None:
    """Accuracy-like labels near 1: linear recalibration extrapolates past 1 on far-away models; the
    predictions and intervals are clipped to [0, 1]."""
    samples = synthetic_samples("mlp", 30, torch.Generator().manual_seed(2))
    samples = [type(s)(**{**s.__dict__, "labels": {"test_accuracy": min(1.0, 0.7 + 0.12 * s.labels["scale"])}})
               for s in samples]
    far = [type(s)(**{**s.__dict__, "model_id": s.model_id + "-far", "state": {k: 6 * v for k, v in s.state.items()}})
           for s in samples[:10]]
    for name in ("weightnet", "statnn-mlp"):
        p = _make(name)
        p.fit(samples[:18], samples[18:], ["test_accuracy"], seed=0)
        pred = p.predict(samples + far)["test_accuracy"]
        lo, hi = p.predict_interval(samples + far, alpha=0.2)["test_accuracy"]
        assert np.all((pred >= 0) & (pred <= 1)), name
        assert np.all((lo >= 0) & (hi <= 1) & (lo <= pred) & (pred <= hi)), name
