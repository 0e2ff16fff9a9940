"""Labelled grids, comparison videos, text rendering and the PNG writer (lora_core.grid)."""
from __future__ import annotations

import struct
import zlib

import pytest
import torch

from lora_core import grid
from lora_core.errors import PatchbayError, ShapeMismatchError
from lora_core.grid import GridLayout, TextRenderer, grid_image, grid_video, png_bytes, split_batch


def _cells(n, h=24, w=32, frames=1):
    return [torch.full((frames, h, w, 3), (i + 1) / (n + 1)) for i in range(n)]


def _decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(w, h, colour type, raw pixels without filter bytes) of an unfiltered/any PNG via zlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        crc = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype = ihdr[0], ihdr[1], ihdr[2], ihdr[3]
    assert depth == 8
    return w, h, ctype, zlib.decompress(idat)


@pytest.mark.parametrize("system_font", [True, False])
def test_grid_places_every_cell_and_draws_labels(system_font):
    layout = GridLayout(columns=3, rows=2, labels_x=("0", "0.5", "1"), labels_y=("seed 1", "seed 2"),
                        title_x="ink strength", title_y="seed", cell_text=("a",) * 6, font_size=14)
    cells = _cells(6)
    out = grid_image(cells, layout, use_system_font=system_font)
    assert out.shape[0] == 1 and out.shape[-1] == 3
    g, _ = grid._geometry(layout, TextRenderer(14, system_font), 24, 32)
    assert out.shape[1:3] == (g.height, g.width)
    for i, c in enumerate(cells):
        y, x = g.cell_origin(layout, i)
        assert torch.equal(out[0, y:y + 24, x:x + 32], c[0])
    # labels: ink (dark pixels) in the title band and the row-label band, none where nothing is written
    assert out[0, :g.title_h].min() < 0.5
    assert out[0, g.top:g.top + 24, :g.left].min() < 0.5
    assert out[0, g.top - 1, g.left + 32: g.left + 36].min() == 1.0  # the gap between columns


def test_text_renderers():
    bitmap = TextRenderer(24, use_system_font=False)
    assert bitmap.backend == "bitmap" and bitmap.scale == 2
    mask = bitmap.render("Hi")
    assert mask.shape == (24, 28) and mask.max() == 1.0
    assert bitmap.fit("é" * 3, 1000) == "???"  # the bitmap font is ASCII
    assert bitmap.fit("a very long label indeed", 84) == "a v..."  # 6 glyphs of 14 px
    if grid.find_system_font() is not None:
        pytest.importorskip("PIL")
        tt = TextRenderer(16)
        assert tt.backend == "truetype" and tt.render("Hi").max() > 0.5


def test_comparison_video_tiles_frame_by_frame():
    clips = [torch.rand(4, 16, 16, 3), torch.rand(4, 16, 16, 3), torch.rand(2, 16, 16, 3)]
    layout = GridLayout(columns=3, labels_x=("a", "b", "c"), title_x="LoRA", font_size=12)
    video = grid_video(clips, layout, use_system_font=False)
    assert video.shape[0] == 4
    g, _ = grid._geometry(layout, TextRenderer(12, False), 16, 16)
    for i, clip in enumerate(clips):
        y, x = g.cell_origin(layout, i)
        for f in range(4):
            assert torch.equal(video[f, y:y + 16, x:x + 16], clip[min(f, clip.shape[0] - 1)])
    # the labels are the same on every frame
    assert torch.equal(video[0, :g.top], video[3, :g.top])


def test_split_batch_cell_major():
    batch = torch.arange(6).float().view(6, 1, 1, 1).expand(6, 2, 2, 3)
    parts = split_batch(batch, 3)
    assert [p[:, 0, 0, 0].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ShapeMismatchError, match="does not split into 4 cells"):
        split_batch(batch, 4)


def test_bad_grid_inputs():
    with pytest.raises(ShapeMismatchError, match="2×1 = 2 cells but 3 images"):
        grid_image(_cells(3), GridLayout(columns=2))
    with pytest.raises(ShapeMismatchError, match="cell 2 is \\(8, 8\\)"):
        grid_image([torch.zeros(1, 16, 16, 3), torch.zeros(1, 8, 8, 3)], GridLayout(columns=2))
    with pytest.raises(PatchbayError, match="3 columns but 2 column labels"):
        GridLayout(columns=3, labels_x=("a", "b"))
    with pytest.raises(PatchbayError, match="over the limit"):
        grid_image([torch.zeros(1, 4096, 4096, 3)] * 8, GridLayout(columns=8))


@pytest.mark.parametrize("use_pillow", [False, True])
def test_png_round_trip(use_pillow, tmp_path):
    if use_pillow:
        pytest.importorskip("PIL")
    img = torch.rand(5, 7, 3)
    data = png_bytes(img, use_pillow=use_pillow)
    if use_pillow:
        from PIL import Image
        import io
        back = Image.open(io.BytesIO(data))
        assert back.size == (7, 5) and back.mode == "RGB"
        pixels = bytes(back.tobytes())
    else:
        w, h, ctype, raw = _decode_png(data)
        assert (w, h, ctype) == (7, 5, 2)
        pixels = b"".join(raw[y * (7 * 3 + 1) + 1:(y + 1) * (7 * 3 + 1)] for y in range(5))
    assert pixels == grid.to_uint8(img).numpy().tobytes()
    path = tmp_path / "g.png"
    grid.write_png(str(path), img, use_pillow=use_pillow)
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # no temporary left



@pytest.mark.parametrize("system_font", [True, False])
def test_row_axis_title_of_a_small_grid_is_not_cut(system_font):
    """An axis title like "glow strength" fits in the row-label band beside 32-pixel cells (it was "glow stren…")."""
    layout = GridLayout(columns=2, rows=2, labels_x=("0", "1"), labels_y=("0", "1"),
                        title_x="ink strength", title_y="glow strength", font_size=12)
    out = grid_image([torch.zeros(32, 32, 3)] * 4, layout, use_system_font=system_font)
    band = out.shape[2] - 2 * 32 - layout.gap
    assert band >= TextRenderer(12, use_system_font=system_font).width("glow strength")
