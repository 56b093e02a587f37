"""Overlays: a Grad-CAM heatmap blended over the grayscale X-ray, boxes outlined, a caption underneath.

Everything is a ``(H, W, 3)`` uint8 RGB array, so the same picture goes to a PNG file (``save_png``) and to
TensorBoard (``to_chw_tensor`` or a ``make_grid`` of several). Display only: heatmaps are scored at the
input resolution, not on these enlarged pictures.

Example:
    >>> image, heat = np.random.rand(64, 64), np.random.rand(64, 64)
    >>> rgb = render_overlay(image, heat, boxes=np.array([[10.0, 12.0, 14.0, 17.0]]),
    ...                      caption=caption_text(0.93, 1, 1))
    >>> rgb.shape, rgb.dtype
    ((278, 256, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pneumo.io.files import atomic_write_bytes

#: Colour of ground-truth box outlines (RGB).
BOX_COLOR = (0, 255, 0)
#: Colour of boxes predicted from the heatmap (``pneumo.xai.heatmap_boxes``).
PREDICTED_BOX_COLOR = (255, 0, 255)
#: Colour of each box reference's boxes (``pneumo.nih.references``): NIH's green, RSNA's orange; others yellow.
REFERENCE_BOX_COLORS = {"nih": BOX_COLOR, "rsna": (255, 160, 0)}
OTHER_REFERENCE_COLOR = (255, 255, 0)
COLOR_NAMES = {
    BOX_COLOR: "green",
    (255, 160, 0): "orange",
    OTHER_REFERENCE_COLOR: "yellow",
    PREDICTED_BOX_COLOR: "magenta",
}


def reference_color(name: str) -> tuple[int, int, int]:
    """The outline colour of a reference's boxes (``REFERENCE_BOX_COLORS``, else yellow).

    Example:
        >>> reference_color("rsna"), reference_color("site")
        ((255, 160, 0), (255, 255, 0))
    """
    return REFERENCE_BOX_COLORS.get(name, OTHER_REFERENCE_COLOR)


def box_legend(names: Sequence[str], predicted: bool = True) -> str:
    """The caption line naming each drawn box set's colour.

    Example:
        >>> box_legend(["nih", "rsna"])
        'boxes: nih green, rsna orange, predicted magenta'
    """
    parts = [f"{name} {COLOR_NAMES[reference_color(name)]}" for name in names]
    return "boxes: " + ", ".join([*parts, *(["predicted magenta"] if predicted else [])])


CLASS_NAMES = ("no pneumonia", "pneumonia")
#: Weight of the heatmap's colour at its maximum, and its matplotlib colour map (``overlay.alpha``/``cmap``).
DEFAULT_ALPHA, DEFAULT_CMAP = 0.45, "jet"


def caption_text(probability: float | None, predicted: int | None = None, truth: int | None = None) -> str:
    """``"p=0.93 pred: pneumonia | true: pneumonia"`` (parts that are ``None`` are left out)."""
    parts = []
    if probability is not None:
        parts.append(f"p={probability:.2f}")
    if predicted is not None:
        parts.append(f"pred: {CLASS_NAMES[int(predicted)]}")
    text = " ".join(parts)
    if truth is not None:
        text = f"{text} | true: {CLASS_NAMES[int(truth)]}" if text else f"true: {CLASS_NAMES[int(truth)]}"
    return text


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _to_unit(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A ``(H, W)`` (or ``(1, H, W)``) image as float in [0, 1]; uint8 is divided by 255."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"an overlay needs a 2-D grayscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def resize_map(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float ``(H, W)`` array to ``size`` = (height, width)."""
    if arr.shape == size:
        return arr
    return np.asarray(
        Image.fromarray(arr.astype(np.float32), mode="F").resize(
            (size[1], size[0]), Image.Resampling.BILINEAR
        )
    )


def blend(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA, cmap: str = DEFAULT_CMAP
) -> np.ndarray:
    """Colour ``heatmap`` (in [0, 1]) with ``cmap`` and blend it over ``image``: ``(H, W, 3)`` uint8.

    The colour's weight grows with the heatmap value (``alpha`` at the maximum), so cold regions show the
    X-ray almost unchanged.
    """
    gray = _to_unit(image)
    heat = np.clip(_to_unit(heatmap), 0.0, 1.0)
    if heat.shape != gray.shape:
        heat = resize_map(heat, gray.shape)
    colour = matplotlib.colormaps[cmap](heat)[..., :3]
    weight = alpha * (0.35 + 0.65 * heat)[..., None]
    rgb = (1.0 - weight) * gray[..., None] + weight * colour
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def render_overlay(  # noqa: PLR0913 - the picture, its boxes (three kinds) and its look
    image: np.ndarray | torch.Tensor,
    heatmap: np.ndarray | torch.Tensor,
    boxes: np.ndarray | None = None,
    caption: str | None = None,
    size: int = 256,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    predicted_boxes: np.ndarray | None = None,
    reference_boxes: Sequence[tuple[np.ndarray, tuple[int, int, int]]] = (),
) -> np.ndarray:
    """The overlay picture: ``size`` px wide, ground-truth ``boxes`` (green) and ``predicted_boxes`` (magenta,
    ``[x, y, w, h]`` in ``image`` pixels) outlined, and each of ``reference_boxes`` (``(boxes, colour)``: other
    references' boxes) in its colour; caption in a strip underneath (one line per ``\\n``).
    Returns ``(H, W, 3)`` uint8."""
    gray = _to_unit(image)
    heat = _to_unit(heatmap)
    h0, w0 = gray.shape
    scale = size / w0
    shape = (int(round(h0 * scale)), size)
    picture = Image.fromarray(blend(resize_map(gray, shape), resize_map(heat, shape), alpha=alpha, cmap=cmap))
    draw = ImageDraw.Draw(picture)
    width = max(2, size // 256)
    # Other references' boxes are drawn inset by a line width each: a box two references agree on shows
    # both colours instead of the last one drawn.
    sets = [(predicted_boxes, PREDICTED_BOX_COLOR, 0), (boxes, BOX_COLOR, 0)]
    sets += [(drawn, colour, (i + 1) * width) for i, (drawn, colour) in enumerate(reference_boxes)]
    for drawn, colour, inset in sets:
        for x, y, w, h in np.asarray(drawn if drawn is not None else np.zeros((0, 4))).reshape(-1, 4):
            x0, y0, x1, y1 = (
                x * scale + inset,
                y * scale + inset,
                (x + w) * scale - 1 - inset,
                (y + h) * scale - 1 - inset,
            )
            draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=width)
    if not caption:
        return np.asarray(picture)
    font_size = max(9, size // 20)
    lines = caption.split("\n")
    strip = Image.new("RGB", (picture.width, (font_size + 4) * len(lines) + 6), (0, 0, 0))
    text = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        font, fitted = _font(font_size), font_size
        while fitted > 6 and text.textlength(line, font=font) > picture.width - 8:  # shrink long lines to fit
            fitted -= 1
            font = _font(fitted)
        text.text((4, 3 + i * (font_size + 4)), line, fill=(255, 255, 255), font=font)
    canvas = Image.new("RGB", (picture.width, picture.height + strip.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(strip, (0, picture.height))
    return np.asarray(canvas)


def make_grid(tiles: Sequence[np.ndarray], ncols: int = 4, pad: int = 2) -> np.ndarray:
    """Tile ``(H, W, 3)`` uint8 pictures (same size) into one, row-major, with ``pad`` px of black between."""
    if not tiles:
        raise ValueError("make_grid needs at least one picture")
    h, w = tiles[0].shape[:2]
    if any(t.shape != tiles[0].shape for t in tiles):
        raise ValueError(f"make_grid needs pictures of one size, got {sorted({t.shape for t in tiles})}")
    ncols = max(1, min(ncols, len(tiles)))
    nrows = -(-len(tiles) // ncols)
    grid = np.zeros((nrows * (h + pad) - pad, ncols * (w + pad) - pad, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = tile
    return grid


def to_chw_tensor(picture: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` uint8 tensor (TensorBoard's ``add_image`` default layout)."""
    return torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1).contiguous()


def save_png(picture: np.ndarray, path: str | os.PathLike) -> None:
    """Write an ``(H, W, 3)`` uint8 picture as PNG, whole or not at all (parent folders are created)."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
