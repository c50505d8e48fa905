"""CIFAR-10-C corruptions: every severity constant pinned against the published table (Hendrycks &
Dietterich, make_cifar_c.py), each corruption really reads its constants, motion blur uses CIFAR's (not the
64x64 ones), the ``corruptions`` property version moved with the change (so `zoo label` relabels exactly the
models labeled under the old one), and our own fractal map: range, determinism and roughness."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import labeling  # noqa: F401  (fills the registry)
import labeling.corruptions as C
from labeling.registry import PROPERTIES
from labeling.run import plan
from storage.writes import Label, write_labels, write_models

# The published CIFAR-10-C table (severity 1..5), written out independently of the module under test.
PUBLISHED = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [.05, .1, .15, .2, .3],
    "contrast": [.75, .5, .4, .3, 0.15],
    "elastic_transform": [(32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07), (32 * 0.08, 32 * 0.06, 32 * 0.06),
                          (32 * 0.1, 32 * 0.04, 32 * 0.05), (32 * 0.1, 32 * 0.03, 32 * 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}
TINY_IMAGENET_MOTION = [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)]  # the 64x64 constants v1 used


def assert_same_constant(ours, published) -> None:
    np.testing.assert_allclose(np.asarray(ours, dtype=float), np.asarray(published, dtype=float), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_constants_match_the_published_table(name: str) -> None:
    assert set(C.CORRUPTIONS) == set(PUBLISHED)
    for s in C.SEVERITIES:
        ours = C._c(name, s)
        if name == "zoom_blur":
            ours = np.arange(*ours)
            assert len(ours) == len(PUBLISHED[name][s - 1])
        assert_same_constant(ours, PUBLISHED[name][s - 1])


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_corruption_reads_its_constants(name: str, monkeypatch) -> None:
    """Changing a table entry changes the output: no function keeps a private copy of its constants."""
    x = np.random.default_rng(0).random((32, 32, 3))
    before = C.CORRUPTIONS[name](x.copy(), 4, np.random.default_rng(1))
    other = list(C.SEVERITY_CONSTANTS[name])
    other[3] = other[4] if name != "elastic_transform" else other[2]  # severity 4 takes another severity's value
    monkeypatch.setitem(C.SEVERITY_CONSTANTS, name, tuple(other))
    after = C.CORRUPTIONS[name](x.copy(), 4, np.random.default_rng(1))
    assert not np.allclose(before, after)


def test_motion_blur_uses_cifar_radius_and_sigma(monkeypatch) -> None:
    seen = []
    real = C.motion_kernel
    monkeypatch.setattr(C, "motion_kernel", lambda r, sg, a: seen.append((r, sg)) or real(r, sg, a))
    x = np.random.default_rng(0).random((32, 32, 3))
    for s in C.SEVERITIES:
        C.motion_blur(x, s, np.random.default_rng(s))
    assert seen == PUBLISHED["motion_blur"] and seen != TINY_IMAGENET_MOTION


def test_version_bump_relabels_exactly_the_models_labeled_before(lake, tiny_digits_models) -> None:
    """Models with v1 corruption labels are stale for `corruptions` only; v2-labeled ones are not planned."""
    prop = PROPERTIES.get("corruptions")
    assert prop.version == 2 and C.CORRUPTION_CODE_VERSION == 2
    write_models(lake, tiny_digits_models, "zoo")
    ids = sorted(r.model_id for r, _ in tiny_digits_models)
    old, new = ids[:3], ids[3:]
    write_labels(lake, [Label(m, "corruption_mean_accuracy", 0.5, "corruptions", 1) for m in old]
                 + [Label(m, "corruption_mean_accuracy", 0.5, "corruptions", 2) for m in new]
                 + [Label(m, "test_accuracy", 0.9, "performance", PROPERTIES.get("performance").version) for m in ids],
                 "labels before the fix")
    batches = plan(lake, "corruptions,performance")
    assert sorted(i for b, _ in batches for i in b) == old
    assert {p.name for _, props in batches for p in props} == {"corruptions"}


# --- the fractal map (fog, frost) -----------------------------------------------------------------
def spectral_slope(field: np.ndarray) -> float:
    """Least-squares slope of log radial power vs log frequency (mid frequencies)."""
    n = field.shape[0]
    power = np.abs(np.fft.fft2(field - field.mean())) ** 2
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    keep = (f > 2 / n) & (f < 0.35)
    return float(np.polyfit(np.log(f[keep]), np.log(power[keep]), 1)[0])


def roughness(field: np.ndarray) -> float:
    """Mean absolute neighbour difference relative to the spread: high = rough."""
    return float(np.abs(np.diff(field, axis=0)).mean() / field.std())


@pytest.mark.parametrize("size", [32, 64, 256])
def test_fractal_range_and_determinism(size: int) -> None:
    a = C.fractal_noise(np.random.default_rng(7), size, 2.0)
    b = C.fractal_noise(np.random.default_rng(7), size, 2.0)
    c = C.fractal_noise(np.random.default_rng(8), size, 2.0)
    assert a.shape == (size, size) and a.dtype == np.float64
    assert a.min() == 0.0 and a.max() == 1.0
    assert np.array_equal(a, b) and not np.allclose(a, c)
    with pytest.raises(ValueError, match="decay"):
        C.fractal_noise(np.random.default_rng(0), size, 0.0)


def test_fractal_roughness_follows_the_decay() -> None:
    """Power spectrum slope -2 log2(decay) (each octave divides amplitude by decay): larger decay, smoother."""
    rough = {}
    for decay in (1.5, 2.0, 3.0):
        slopes = [spectral_slope(C.fractal_noise(np.random.default_rng(i), 128, decay)) for i in range(4)]
        assert np.mean(slopes) == pytest.approx(-2 * math.log2(decay), abs=0.25)
        rough[decay] = np.mean([roughness(C.fractal_noise(np.random.default_rng(i), 128, decay)) for i in range(4)])
    assert rough[1.5] > 1.3 * rough[2.0] and rough[2.0] > 1.3 * rough[3.0] > 0


def test_fog_uses_a_crop_of_a_large_map(monkeypatch) -> None:
    """CIFAR-10-C fog adds a 32x32 crop of a 256x256 map: per-pixel steps far smaller than a 32x32 map's."""
    sizes = []
    real = C.fractal_noise
    monkeypatch.setattr(C, "fractal_noise", lambda rng, size, decay: sizes.append((size, decay)) or real(rng, size, decay))
    x = np.full((32, 32, 1), 0.5)
    steps, small = [], []
    for seed in range(4):
        fogged = C.fog(x.copy(), 5, np.random.default_rng(seed))[..., 0]
        steps.append(np.abs(np.diff(fogged, axis=0)).mean() / (1.5 * 0.5 / 2.0))  # fog weight 1.5, then rescaled
        small.append(np.abs(np.diff(real(np.random.default_rng(seed), 32, 1.75), axis=0)).mean())
    assert sizes == [(256, 1.75)] * 4
    assert np.mean(steps) < 0.8 * np.mean(small)
    out = C.corrupt(torch.full((2, 1, 8, 8), 0.5), "fog", 3, seed=0)
    assert out.shape == (2, 1, 8, 8) and 0 <= out.min() and out.max() <= 1
