"""Overlay pictures: colours follow the heatmap, boxes are outlined where they are, captions are drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.xai.overlay import (
    BOX_COLOR,
    HEAT_FLOOR,
    PREDICTED_BOX_COLOR,
    blend,
    caption_text,
    make_grid,
    render_overlay,
    save_png,
    to_chw_tensor,
)


def test_blend_colours_hot_regions_red_and_leaves_cold_regions_the_xray_itself() -> None:
    image = np.full((32, 32), 0.5, np.float32)
    heat = np.zeros((32, 32), np.float32)
    heat[:, 16:] = 1.0
    heat[:, 8:16] = HEAT_FLOOR / 2  # below the floor: not drawn either
    rgb = blend(image, heat, alpha=0.5, cmap="jet")
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    hot = rgb[5, 25].astype(int)
    assert hot[0] > hot[2] + 60  # jet's top is dark red
    # issue 26: no blue cast from the colour map's low end: cold regions are the X-ray's own grey
    assert (rgb[:, :16] == 128).all()


def test_a_negative_overlay_has_no_predicted_box_and_every_overlay_a_legend() -> None:
    image, heat = np.full((64, 64), 0.5), np.zeros((64, 64))
    heat[20:30, 20:30] = 1.0
    box = np.array([[20.0, 20.0, 10.0, 10.0]])
    magenta = np.array(PREDICTED_BOX_COLOR, np.uint8)
    positive = render_overlay(image, heat, predicted_boxes=box, caption="p", size=256, predicted=1)
    negative = render_overlay(image, heat, predicted_boxes=box, caption="p", size=256, predicted=0)
    assert np.all(positive[:256] == magenta, axis=-1).any()
    assert not np.all(negative[:256] == magenta, axis=-1).any()
    # the line saying the heat is normalised per image (same legend either way: no box drawn)
    note = render_overlay(image, heat, caption="p", size=256, predicted=0)
    assert note.shape[0] > render_overlay(image, heat, caption="p", size=256, predicted=1).shape[0]
    strip = positive[256:]
    assert np.all(strip == magenta, axis=-1).any()  # the predicted box's legend swatch
    coloured = (strip.max(axis=-1).astype(int) - strip.min(axis=-1)) > 100
    assert coloured.sum() > 100  # the colour bar


def test_uint8_and_float_images_give_the_same_picture() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    heat = rng.random((16, 16))
    assert np.array_equal(blend(pixels, heat), blend(pixels / 255.0, heat))


def test_render_overlay_outlines_the_box_at_its_scaled_place() -> None:
    image, heat = np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)
    rgb = render_overlay(image, heat, boxes=np.array([[16.0, 8.0, 16.0, 32.0]]), size=256)
    assert rgb.shape == (256, 256, 3)
    green = np.all(rgb == np.array(BOX_COLOR, np.uint8), axis=-1)
    rows, cols = np.nonzero(green)
    assert (cols.min(), cols.max()) == (64, 127) and (rows.min(), rows.max()) == (32, 159)  # x4 scale
    assert not green[100, 100] and not green[200, 200]


def test_caption_strip_holds_text() -> None:
    rgb = render_overlay(
        np.zeros((64, 64)), np.zeros((64, 64)), caption="a.png\n" + caption_text(0.93, 1, 0), size=192
    )
    assert rgb.shape[1] == 192 and rgb.shape[0] > 192
    strip = rgb[192:]
    assert (strip > 200).any(axis=-1).sum() > 50  # white glyphs on black


def test_caption_text() -> None:
    assert caption_text(0.934, 1, 0) == "p=0.93 pred: pneumonia | true: no pneumonia"
    assert caption_text(0.1, 0, None) == "p=0.10 pred: no pneumonia"
    assert caption_text(None, None, 1) == "true: pneumonia"


def test_grid_tensor_and_png(tmp_path: Path) -> None:
    tiles = [np.full((10, 12, 3), v, np.uint8) for v in (50, 100, 150)]
    grid = make_grid(tiles, ncols=2, pad=2)
    assert grid.shape == (22, 26, 3)
    assert grid[0, 0, 0] == 50 and grid[0, 14, 0] == 100 and grid[12, 0, 0] == 150 and grid[12, 14, 0] == 0
    chw = to_chw_tensor(grid)
    assert tuple(chw.shape) == (3, 22, 26) and int(chw[0, 12, 0]) == 150
    save_png(grid, tmp_path / "sub" / "grid.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "grid.png")), grid)
    with pytest.raises(ValueError, match="one size"):
        make_grid([tiles[0], np.zeros((5, 5, 3), np.uint8)])
