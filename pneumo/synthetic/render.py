"""Drawing of one synthetic chest radiograph: a patient's anatomy, findings, a pneumonia opacity, film noise.

Shared by the demo set (``pneumo.synthetic.demo``) and the look-alike of NIH's index
(``pneumo.synthetic.like_index``).

Example:
    >>> rng = np.random.default_rng(0)
    >>> anatomy = random_anatomy(rng)
    >>> render(rng, 64, 6.0, anatomy, {"Pneumonia"}, opacity_box(rng, anatomy)).shape
    (64, 64)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Anatomy:
    """Per-patient geometry, shared by a patient's follow-up images (normalised coordinates)."""

    lung_dx: float
    lung_rx: float
    lung_ry: float
    lung_cy: float
    heart_r: float
    brightness: float


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """A patient's geometry, drawn once and shared by all their images."""
    return Anatomy(
        lung_dx=rng.uniform(0.18, 0.22),
        lung_rx=rng.uniform(0.13, 0.16),
        lung_ry=rng.uniform(0.25, 0.3),
        lung_cy=rng.uniform(0.42, 0.47),
        heart_r=rng.uniform(0.1, 0.12),
        brightness=rng.uniform(0.85, 1.1),
    )


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells x cells`` grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def ellipse(
    xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float, soft: float
) -> np.ndarray:
    """A soft-edged filled ellipse in [0, 1]."""
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return 1.0 / (1.0 + np.exp((r - 1.0) / soft))


def render(
    rng: np.random.Generator,
    size: int,
    noise: float,
    anatomy: Anatomy,
    labels: set[str],
    box: tuple[float, float, float, float] | None,
) -> np.ndarray:
    """Draw one chest radiograph as uint8 (``size x size``); ``box`` = opacity (x, y, w, h), normalised."""
    return render_with_lungs(rng, size, noise, anatomy, labels, box)[0]


def render_with_lungs(
    rng: np.random.Generator,
    size: int,
    noise: float,
    anatomy: Anatomy,
    labels: set[str],
    box: tuple[float, float, float, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``render``'s picture and its lung fields: a boolean ``size x size`` mask (the drawn lungs at half
    their soft edge), from the same draws of ``rng``."""
    s = size
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    shift_x, shift_y = rng.normal(0, 0.01, 2)
    xx, yy = xx - shift_x, yy - shift_y
    a = anatomy
    img = 0.06 + 0.5 * ellipse(xx, yy, 0.5, 0.58, 0.46, 0.56, 0.04)
    lungs = np.maximum(
        ellipse(xx, yy, 0.5 - a.lung_dx, a.lung_cy, a.lung_rx, a.lung_ry, 0.06),
        ellipse(xx, yy, 0.5 + a.lung_dx, a.lung_cy, a.lung_rx, a.lung_ry, 0.06),
    )
    ribs = np.clip(np.cos(2 * np.pi * (yy * 9 - 3 * (xx - 0.5) ** 2)), 0, 1) ** 6
    img = img - lungs * (0.3 - 0.07 * ribs)
    img = img + 0.18 * np.exp(-(((xx - 0.5) / 0.035) ** 2))  # spine / mediastinum
    heart_r = a.heart_r * (1.35 if "Cardiomegaly" in labels else 1.0)
    img = img + 0.25 * ellipse(xx, yy, 0.55, a.lung_cy + 0.17, heart_r * 1.15, heart_r, 0.08)
    img = img + 0.2 * (yy > a.lung_cy + a.lung_ry * 0.92) * ellipse(xx, yy, 0.5, 0.8, 0.45, 0.2, 0.1)
    if "Effusion" in labels:
        side = 0.5 + a.lung_dx * rng.choice([-1, 1])
        base = 1.0 / (1.0 + np.exp(-(yy - (a.lung_cy + a.lung_ry * 0.55)) / 0.015))
        img = img + 0.22 * base * ellipse(xx, yy, side, a.lung_cy, a.lung_rx, a.lung_ry, 0.06)
    for finding, radius in (("Nodule", 0.02), ("Mass", 0.05)):
        if finding in labels:
            cx = 0.5 + a.lung_dx * rng.choice([-1, 1]) + rng.uniform(-0.5, 0.5) * a.lung_rx
            cy = a.lung_cy + rng.uniform(-0.5, 0.5) * a.lung_ry
            img = img + 0.3 * ellipse(xx, yy, cx, cy, radius, radius, 0.15)
    if box is not None:
        bx, by, bw, bh = box
        r2 = ((xx - bx - bw / 2) / (bw / 2)) ** 2 + ((yy - by - bh / 2) / (bh / 2)) ** 2
        blob = np.clip(1.0 - r2, 0, 1) ** 1.5 * (0.75 + 0.25 * smooth_noise(rng, s, 6))
        img = img + rng.uniform(0.26, 0.36) * blob * (0.3 + 0.7 * lungs)
    img = img * a.brightness + 0.04 * smooth_noise(rng, s, 4)
    if rng.random() < 0.3:  # a side marker, unrelated to any label (models must not key on it)
        m = max(2, s // 24)
        y0, x0 = int(rng.uniform(0.03, 0.1) * s), int(rng.choice([0.05, 0.85]) * s)
        img[y0 : y0 + 2 * m, x0 : x0 + m] = 0.95
    img = img * 255.0 + rng.normal(0, noise, (s, s))
    return np.clip(img, 0, 255).astype(np.uint8), lungs > 0.5


def draw_marker(pixels: np.ndarray) -> None:
    """Burn a bright square tag (1/8 of the side) into the bottom-right corner, outside the lung fields, like
    a portable film's label (in place; the side markers ``render`` draws sit at the top).

    Example:
        >>> pixels = np.zeros((32, 32), np.uint8); draw_marker(pixels)
        >>> int(pixels.sum() // 245), int(pixels[-2, -2]), int(pixels[0, 0])
        (16, 245, 0)
    """
    s = pixels.shape[0]
    m, at = max(3, s // 8), max(1, s // 32)
    pixels[s - at - m : s - at, s - at - m : s - at] = 245


def opacity_box(rng: np.random.Generator, a: Anatomy) -> tuple[float, float, float, float]:
    """A pneumonia box (x, y, w, h), normalised, inside one lung field; median ~0.22 x 0.27 of the side."""
    w = float(np.clip(np.exp(rng.normal(np.log(0.22), 0.2)), 0.12, 0.32))
    h = float(np.clip(np.exp(rng.normal(np.log(0.27), 0.2)), 0.14, 0.40))
    cx = 0.5 + a.lung_dx * rng.choice([-1, 1]) + rng.uniform(-0.3, 0.3) * max(a.lung_rx - w / 2, 0)
    cy = a.lung_cy + rng.uniform(-0.6, 0.6) * max(a.lung_ry - h / 2, 0)
    return cx - w / 2, cy - h / 2, w, h


def encode_png(pixels: np.ndarray) -> bytes:
    """``pixels`` (uint8, ``H x W``) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()
