"""Overlays: a Grad-CAM heatmap blended over the grayscale X-ray, boxes outlined, a caption underneath.

Everything is a ``(H, W, 3)`` uint8 RGB array, so the same picture goes to a PNG file (``save_png``) and to
TensorBoard (``to_chw_tensor`` or a ``make_grid`` of several). Display only: heatmaps are scored at the
input resolution, not on these enlarged pictures.

Example:
    >>> image, heat = np.random.rand(64, 64), np.random.rand(64, 64)
    >>> rgb = render_overlay(image, heat, boxes=np.array([[10.0, 12.0, 14.0, 17.0]]),
    ...                      caption=caption_text(0.93, 1, 1))
    >>> rgb.shape, rgb.dtype
    ((318, 256, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumo.io.files import atomic_write_bytes

if TYPE_CHECKING:  # torch only where a tensor comes in: the gallery and `evaluate` draw without it
    import torch

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
#: Heat below this share of the map's range is not drawn: the radiograph shows as it is there (a colour map's
#: low end over the whole image gave every overlay a blue cast).
HEAT_FLOOR = 0.2
#: Width explain draws overlays at, at least (a 64-px source drawn at its own width had an unreadable caption).
MIN_WIDTH = 384
#: What a negative prediction's caption says about its heat.
NEGATIVE_NOTE = "predicted negative: heat is normalised per image (its hottest spot is not a finding)"


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
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
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
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    floor: float = HEAT_FLOOR,
) -> np.ndarray:
    """Colour ``heatmap`` (in [0, 1]) with ``cmap`` and blend it over ``image``: ``(H, W, 3)`` uint8.

    Heat below ``floor`` is transparent (the X-ray unchanged); above it the colour's weight grows to
    ``alpha`` at the maximum.
    """
    gray = _to_unit(image)
    heat = np.clip(_to_unit(heatmap), 0.0, 1.0)
    if heat.shape != gray.shape:
        heat = resize_map(heat, gray.shape)
    colour = matplotlib.colormaps[cmap](heat)[..., :3]
    weight = alpha * np.clip((heat - floor) / max(1.0 - floor, 1e-6), 0.0, 1.0)[..., None]
    rgb = (1.0 - weight) * gray[..., None] + weight * colour
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def render_overlay(  # noqa: PLR0913 - the picture, then one optional keyword per drawn element
    image: np.ndarray | torch.Tensor,
    heatmap: np.ndarray | torch.Tensor,
    boxes: np.ndarray | None = None,
    caption: str | None = None,
    size: int = 256,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    predicted_boxes: np.ndarray | None = None,
    reference_boxes: Sequence[tuple[str, np.ndarray]] = (),
    predicted: int | None = None,
    boxes_name: str = "nih",
) -> np.ndarray:
    """The overlay picture: ``size`` px wide, ground-truth ``boxes`` (green, named ``boxes_name`` in the
    legend) and ``predicted_boxes`` (magenta, ``[x, y, w, h]`` in ``image`` pixels) outlined, and each of
    ``reference_boxes`` (``(name, boxes)``: other references' boxes) in its colour (``reference_color``);
    caption in a strip underneath (one line per ``\\n``) with a legend: the colour bar and each box colour
    drawn. ``predicted=0`` (a negative prediction) draws no predicted box and says that the heat is
    normalised per image (``NEGATIVE_NOTE``). Returns ``(H, W, 3)`` uint8.

    Example:
        >>> rgb = render_overlay(np.zeros((32, 32)), np.ones((32, 32)), size=64)
        >>> rgb.shape
        (64, 64, 3)
    """
    gray = _to_unit(image)
    heat = _to_unit(heatmap)
    h0, w0 = gray.shape
    scale = size / w0
    shape = (int(round(h0 * scale)), size)
    picture = Image.fromarray(blend(resize_map(gray, shape), resize_map(heat, shape), alpha=alpha, cmap=cmap))
    if predicted == 0:  # a negative's hottest spot is not a finding: no predicted box
        predicted_boxes = None
    width = max(2, size // 256)
    # Other references' boxes are drawn inset by a line width each: a box two references agree on shows
    # both colours instead of the last one drawn.
    sets = [(predicted_boxes, PREDICTED_BOX_COLOR, "predicted", 0), (boxes, BOX_COLOR, boxes_name, 0)]
    sets += [(b, reference_color(n), n, (i + 1) * width) for i, (n, b) in enumerate(reference_boxes)]
    legend = _draw_boxes(ImageDraw.Draw(picture), sets, scale, width)
    if not caption:
        return np.asarray(picture)
    lines = caption.split("\n") + ([NEGATIVE_NOTE] if predicted == 0 else [])
    strip = _caption_strip(picture.width, lines, legend, cmap)
    canvas = Image.new("RGB", (picture.width, picture.height + strip.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(strip, (0, picture.height))
    return np.asarray(canvas)


_Legend = list[tuple[tuple[int, int, int], str]]


def _draw_boxes(draw: ImageDraw.ImageDraw, sets: Sequence[tuple], scale: float, width: int) -> _Legend:
    """Outline each ``(boxes, colour, name, inset)`` set; returns the legend of the sets with a box."""
    legend: _Legend = []
    for drawn, colour, name, inset in sets:
        outlined = np.asarray(drawn if drawn is not None else np.zeros((0, 4))).reshape(-1, 4)
        if len(outlined) and (colour, name) not in legend:
            legend.append((colour, name))
        for x, y, w, h in outlined:
            x0, y0 = x * scale + inset, y * scale + inset
            x1, y1 = (x + w) * scale - 1 - inset, (y + h) * scale - 1 - inset
            draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=width)
    return legend


def _fitted_font(draw: ImageDraw.ImageDraw, line: str, size: int, width: int) -> Any:
    """The font of ``size`` px, shrunk until ``line`` fits ``width`` px (not below 8 px)."""
    font, fitted = _font(size), size
    while fitted > 8 and draw.textlength(line, font=font) > width:
        fitted -= 1
        font = _font(fitted)
    return font


def _caption_strip(width: int, lines: Sequence[str], legend: _Legend, cmap: str) -> Image.Image:
    """The black strip under an overlay: the caption's lines, then the colour bar and the box legend
    (wrapped onto further rows when it does not fit the width)."""
    font_size = max(12, width // 40)  # readable at the picture's own size (explain draws >= MIN_WIDTH px)
    row, font = font_size + 6, _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    bar_w = max(40, width // 6)
    label = f"low-high (< {HEAT_FLOOR:.0%} not drawn)"
    # Legend items as (kind, colour, text, width in px); placed left to right, wrapped at the strip's width.
    items: list[tuple[str, tuple[int, int, int] | None, str, int]] = [
        ("bar", None, label, int(measure.textlength(f"heat{label}", font=font)) + bar_w + 18)
    ]
    items += [(name, c, name, font_size + 2 + int(measure.textlength(name, font=font))) for c, name in legend]
    places: list[tuple[int, int]] = []
    x, rows = 6, 0
    for _, _, _, w in items:
        if x > 6 and x + w > width - 6:
            x, rows = 6, rows + 1
        places.append((x, rows))
        x += w + 14
    strip = Image.new("RGB", (width, row * (len(lines) + rows + 1) + 8), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text(
            (6, 4 + i * row), line, fill=(255, 255, 255), font=_fitted_font(draw, line, font_size, width - 12)
        )
    top = 4 + len(lines) * row
    for (_, colour, text, _), (x, r) in zip(items, places):
        y = top + r * row
        if colour is None:  # the colour bar: "heat", the colour map from the floor up, its label
            colours = matplotlib.colormaps[cmap](np.linspace(HEAT_FLOOR, 1.0, bar_w))[:, :3]
            bar = np.broadcast_to((colours * 255).astype(np.uint8)[None], (font_size, bar_w, 3))
            draw.text((x, y), "heat", fill=(255, 255, 255), font=font)
            at = x + 6 + int(draw.textlength("heat", font=font))
            strip.paste(Image.fromarray(np.ascontiguousarray(bar)), (at, y + 2))
            draw.text((at + bar_w + 6, y), text, fill=(255, 255, 255), font=font)
        else:
            draw.rectangle([x, y + 3, x + font_size - 4, y + font_size - 1], outline=colour, width=3)
            draw.text((x + font_size + 2, y), text, fill=(255, 255, 255), font=font)
    return strip


def make_grid(tiles: Sequence[np.ndarray], ncols: int = 4, pad: int = 2) -> np.ndarray:
    """Tile ``(H, W, 3)`` uint8 pictures of one width into one, row-major, with ``pad`` px of black between;
    shorter pictures are padded with black at the bottom (a caption's legend may wrap onto one more row).

    Example:
        >>> make_grid([np.zeros((4, 3, 3), np.uint8), np.zeros((6, 3, 3), np.uint8)], pad=0).shape
        (6, 6, 3)
    """
    if not tiles:
        raise ValueError("make_grid needs at least one picture")
    w = tiles[0].shape[1]
    if any(t.shape[1:] != tiles[0].shape[1:] for t in tiles):
        raise ValueError(f"make_grid needs pictures of one size, got {sorted({t.shape for t in tiles})}")
    h = max(t.shape[0] for t in tiles)
    ncols = max(1, min(ncols, len(tiles)))
    nrows = -(-len(tiles) // ncols)
    grid = np.zeros((nrows * (h + pad) - pad, ncols * (w + pad) - pad, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + tile.shape[0], c * (w + pad) : c * (w + pad) + w] = tile
    return grid


def to_chw_tensor(picture: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` uint8 tensor (TensorBoard's ``add_image`` default layout)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1).contiguous()


def save_png(picture: np.ndarray, path: str | os.PathLike) -> None:
    """Write an ``(H, W, 3)`` uint8 picture as PNG, whole or not at all (parent folders are created)."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
