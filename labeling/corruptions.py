"""The 15 CIFAR-10-C corruptions x 5 severities, with CIFAR-10-C's own severity constants.

Written after Hendrycks & Dietterich's ``make_cifar_c.py`` (its published constants, our own code) for numpy/scipy/PIL (no ImageMagick, no cv2):
each function maps one (32, 32, C) float image in [0, 1] to a corrupted one, drawing randomness from the
``numpy.random.Generator`` it is given. Differences from the original, on purpose:
- small images: the CIFAR constants assume 32x32, so images of another size are resized to 32x32
  (nearest-neighbour blocks when 32 is a multiple of the size, so that resizing back by area averaging
  returns the clean image exactly; bilinear otherwise), corrupted, and resized back (area averaging).
  An 8x8 digit thus sees the corruption at CIFAR scale, then at the sensor's resolution;
- motion blur (and the snow layer's blur) uses a one-sided Gaussian line kernel (radius, sigma, angle)
  instead of ImageMagick's ``motion_blur``;
- the fractal maps of fog and frost come from our own spectral synthesis (``fractal_noise``) with the
  same per-octave decay constants, not the original's diamond-square code;
- frost overlays a seeded procedural frost texture (fractal map with sharp crystal streaks) instead of
  the six frost photographs shipped with ImageNet-C;
- grayscale images: brightness scales V of HSV, which for one channel is the channel itself.
Corrupted test sets are made once per (dataset, seed, subset) and cached on disk (``corrupted_test_set``).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pathlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from core import settings
from core.hashing import stable_hash

SIZE = 32  # CIFAR-10-C's image size: the constants below are calibrated for it
# bump when any function below changes its output (invalidates the on-disk cache); bump the
# ``corruptions`` property's version in labeling/corruption_robustness.py with it (relabels the zoo)
CORRUPTION_CODE_VERSION = 2
FOG_MAP = 256  # CIFAR-10-C crops fog from a 256x256 fractal map: its large-scale structure at 32x32
Rng = np.random.Generator

# Per-severity constants (severity 1..5) of CIFAR-10-C's ``make_cifar_c.py`` (Hendrycks & Dietterich),
# pinned against the published table in tests/test_corruptions.py. Tuples name their fields below.
SEVERITY_CONSTANTS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt-and-pepper fraction
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # disk radius, alias blur
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, max delta, iterations
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # radius, sigma
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),  # arange
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    # snow: loc, scale, zoom, threshold, blur radius, blur sigma, image weight
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image weight, frost weight
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # fog weight, fractal decay
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor around the mean
    "elastic_transform": tuple((SIZE * a, SIZE * b, SIZE * c) for a, b, c in (
        (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))),
    # elastic: displacement alpha, displacement sigma, affine jitter (pixels)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
}


def _c(name: str, severity: int):
    return SEVERITY_CONSTANTS[name][severity - 1]


def fractal_noise(rng: Rng, size: int = 32, decay: float = 3.0) -> np.ndarray:
    """A periodic fractal height map in [0, 1] (min 0, max 1), (size, size), by spectral synthesis.

    Gaussian Fourier coefficients with amplitude |f|^-log2(decay): each doubling of spatial frequency
    divides the amplitude by ``decay``, the same scale law as midpoint displacement with a per-octave
    decay, so larger ``decay`` gives smoother maps (power spectrum slope -2 log2(decay)). The mean is
    dropped (no f = 0 term); the result is min-max normalised.
    """
    if size < 2 or decay <= 0:
        raise ValueError(f"fractal_noise needs size >= 2 and decay > 0, got size={size}, decay={decay}")
    freq = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])  # cycles/pixel, (size, size//2+1)
    freq[0, 0] = 1.0
    amplitude = freq ** -math.log2(decay)
    amplitude[0, 0] = 0.0
    coeffs = amplitude * (rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape))
    field = np.fft.irfft2(coeffs, s=(size, size))
    field -= field.min()
    top = field.max()
    return field / top if top > 0 else field


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over H, W (not channels), reflecting at the border like skimage.filters.gaussian."""
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)


def _conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.convolve(x[..., c], kernel, mode="mirror") for c in range(x.shape[-1])], -1)


def clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def motion_kernel(radius: int, sigma: float, angle: float) -> np.ndarray:
    """One-sided Gaussian-weighted line of length ``radius`` at ``angle`` degrees (ImageMagick-like)."""
    size = 2 * radius + 1
    k = np.zeros((size, size))
    rad = math.radians(angle)
    for d in range(radius + 1):
        w = math.exp(-d * d / (2 * sigma * sigma))
        r, c = radius - int(round(d * math.sin(rad))), radius + int(round(d * math.cos(rad)))
        k[r, c] += w
    return k / k.sum()


def disk(radius: float, alias_blur: float) -> np.ndarray:
    size = 8 if radius <= 8 else int(radius)
    coords = np.arange(-size, size + 1)
    xx, yy = np.meshgrid(coords, coords)
    d = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    d /= d.sum()
    return ndimage.gaussian_filter(d, sigma=alias_blur, truncate=1.0 / max(alias_blur, 1e-6) + 0.01)


def _gray(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] == 3:
        return (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    return x.mean(-1, keepdims=True)


# --- the 15 corruptions (x: (32, 32, C) float in [0, 1]) ------------------------------------------
def gaussian_noise(x, s, rng):
    c = _c("gaussian_noise", s)
    return x + rng.normal(size=x.shape, scale=c)


def shot_noise(x, s, rng):
    c = _c("shot_noise", s)
    return rng.poisson(x * c) / c


def impulse_noise(x, s, rng):
    c = _c("impulse_noise", s)
    out = x.copy()
    hit = rng.random(x.shape) < c
    out[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float64)
    return out


def defocus_blur(x, s, rng):
    c = _c("defocus_blur", s)
    return _conv(x, disk(c[0], c[1]))


def glass_blur(x, s, rng):
    c = _c("glass_blur", s)
    x = np.floor(np.clip(_gauss(x, c[0]), 0, 1) * 255) / 255  # the original quantizes to uint8 here
    h_ = x.shape[0]
    for _ in range(c[2]):
        for h in range(h_ - c[1], c[1], -1):
            for w in range(h_ - c[1], c[1], -1):
                dx, dy = rng.integers(-c[1], c[1], size=2)
                hp, wp = h + dy, w + dx
                x[h, w], x[hp, wp] = x[hp, wp].copy(), x[h, w].copy()
    return _gauss(x, c[0])


def motion_blur(x, s, rng):
    c = _c("motion_blur", s)
    return _conv(x, motion_kernel(c[0], c[1], rng.uniform(-45, 45)))


def zoom_blur(x, s, rng):
    c = np.arange(*_c("zoom_blur", s))
    out = np.zeros_like(x)
    for z in c:
        out += clipped_zoom(x, z)
    return (x + out) / (len(c) + 1)


def snow(x, s, rng):
    c = _c("snow", s)
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])[..., None]
    layer = clipped_zoom(layer, c[2])
    layer[layer < c[3]] = 0
    layer = np.clip(_conv(np.clip(layer, 0, 1), motion_kernel(c[4], c[5], rng.uniform(-135, -45))), 0, 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2)


def frost(x, s, rng):
    c = _c("frost", s)
    base = fractal_noise(rng, SIZE, decay=1.5)  # fine-grained ice texture
    streaks = np.clip(_conv(rng.random((SIZE, SIZE, 1)) ** 8, motion_kernel(4, 2, rng.uniform(0, 180))) * 6, 0, 1)
    texture = np.clip(0.6 * base[..., None] + 0.6 * streaks, 0, 1)
    return c[0] * x + c[1] * texture


def fog(x, s, rng):
    c = _c("fog", s)
    max_val = x.max()
    x = x + c[0] * fractal_noise(rng, FOG_MAP, decay=c[1])[:SIZE, :SIZE, None]
    return x * max_val / (max_val + c[0])


def brightness(x, s, rng):
    c = _c("brightness", s)
    v = x.max(-1, keepdims=True)  # HSV value; H and S fixed means RGB scales with V
    v_new = np.clip(v + c, 0, 1)
    return np.where(v > 0, x * v_new / np.maximum(v, 1e-12), v_new)


def contrast(x, s, rng):
    c = _c("contrast", s)
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def elastic_transform(x, s, rng):
    c = _c("elastic_transform", s)
    h, w = x.shape[:2]
    center, sq = np.array([h, w], dtype=np.float64) // 2, min(h, w) // 3
    pts1 = np.array([center + sq, [center[0] + sq, center[1] - sq], center - sq])
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape)
    # affine map taking output (pts2) back to input (pts1) coordinates, as cv2.warpAffine samples
    a = np.linalg.solve(np.c_[pts2, np.ones(3)], pts1)  # (3, 2): [x y 1] @ a
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    src = np.c_[cc.ravel(), rr.ravel(), np.ones(h * w)] @ a  # points are (col, row) as in cv2
    warped = np.stack([ndimage.map_coordinates(x[..., k], [src[:, 1], src[:, 0]], order=1, mode="mirror").reshape(h, w)
                       for k in range(x.shape[-1])], -1)
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), c[1], mode="reflect", truncate=3) * c[0]
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), c[1], mode="reflect", truncate=3) * c[0]
    return np.stack([ndimage.map_coordinates(warped[..., k], [rr + dy, cc + dx], order=1, mode="reflect")
                     for k in range(x.shape[-1])], -1)


def _pil(x: np.ndarray) -> Image.Image:
    u8 = np.uint8(np.clip(x, 0, 1) * 255 + 0.5)
    return Image.fromarray(u8[..., 0], "L") if x.shape[-1] == 1 else Image.fromarray(u8, "RGB")


def _unpil(img: Image.Image, channels: int) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64) / 255
    return a[..., None] if channels == 1 else a


def pixelate(x, s, rng):
    c = _c("pixelate", s)
    img = _pil(x).resize((int(SIZE * c), int(SIZE * c)), Image.BOX).resize((SIZE, SIZE), Image.BOX)
    return _unpil(img, x.shape[-1])


def jpeg_compression(x, s, rng):
    c = _c("jpeg_compression", s)
    buf = io.BytesIO()
    _pil(x).save(buf, "JPEG", quality=c)
    return _unpil(Image.open(buf), x.shape[-1])


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, Rng], np.ndarray]] = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost,
    fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression)}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> corrupted (N, C, H, W) in [0, 1]. Deterministic in ``seed``."""
    fn = CORRUPTIONS[name]
    n, ch, h, w = images.shape
    if (h, w) == (SIZE, SIZE):
        big = images
    elif SIZE % h == 0 and SIZE % w == 0:  # blocks of pixels: area-downsampling undoes it exactly
        big = F.interpolate(images, size=(SIZE, SIZE), mode="nearest")
    else:
        big = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    arr = big.permute(0, 2, 3, 1).double().numpy()  # (N, 32, 32, C)
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])
    out = np.stack([np.clip(fn(arr[i].copy(), severity, rng), 0, 1) for i in range(n)])
    res = torch.from_numpy(out).permute(0, 3, 1, 2).float()
    if (h, w) != (SIZE, SIZE):
        res = F.interpolate(res, size=(h, w), mode="area")
    return res.clamp(0, 1)


def cache_dir() -> pathlib.Path:
    return settings.cache_root() / "corruptions"


def corrupted_test_set(dataset: str, seed: int, images: torch.Tensor, names: tuple[str, ...] = tuple(CORRUPTIONS),
                       severities: tuple[int, ...] = SEVERITIES, root: pathlib.Path | None = None,
                       progress: Callable[[int, int], None] | None = None) -> dict[tuple[str, int], torch.Tensor]:
    """Every (corruption, severity) version of ``images``, made once and cached on disk.

    The cache key hashes the dataset, seed, the images themselves and CORRUPTION_CODE_VERSION, so a
    different subset or changed code never reuses stale files. Files are written atomically."""
    root = pathlib.Path(root) if root else cache_dir()
    digest = hashlib.sha256(images.float().contiguous().numpy().tobytes()).hexdigest()
    key = stable_hash({"dataset": dataset, "seed": seed, "code": CORRUPTION_CODE_VERSION, "images": digest})
    out: dict[tuple[str, int], torch.Tensor] = {}
    todo = [(n, s) for n in names for s in severities]
    for i, (name, sev) in enumerate(todo):
        path = root / f"{dataset}-{seed}-{key}" / f"{name}-{sev}.pt"
        if path.is_file():
            out[(name, sev)] = torch.load(path, weights_only=True)
        else:
            t = corrupt(images, name, sev, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(t, tmp)
            os.replace(tmp, path)
            out[(name, sev)] = t
        if progress is not None:
            progress(i + 1, len(todo))
    return out
