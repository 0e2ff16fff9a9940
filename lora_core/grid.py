"""Labelled grids of images, and labelled comparison videos, as IMAGE tensors.

Images use ComfyUI's IMAGE layout: float tensors (B, H, W, C) in [0, 1].
A grid has ``columns`` × ``rows`` cells in reading order (row-major), each
cell one image of the same size::

    ┌──────────────── title_x ────────────────┐
    │ title_y │ label_x[0] │ label_x[1] │ …   │
    │ label_y0│  cell 0    │  cell 1    │     │
    │         │  cell text │  cell text │     │
    │ label_y1│  cell c    │  …                │

A comparison video is the same layout per frame: cell ``i`` contributes its
frame ``f`` to output frame ``f`` (a cell with fewer frames holds its last
one), so a batch of F frames comes out that core's video save nodes write.

Text: a TrueType system font through Pillow when both are present (DejaVu,
Liberation, …), else the built-in 7×12 bitmap font of ``grid_font`` scaled to
the size asked.  Nothing is downloaded.  :func:`write_png` writes a PNG with
Pillow or, without it, with zlib from the standard library.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import torch

from . import grid_font
from .errors import PatchbayError, ShapeMismatchError

Tensor = torch.Tensor

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "/System/Library/Fonts",
             os.path.expanduser("~/.fonts"), os.path.expanduser("~/.local/share/fonts"),
             os.path.join(os.environ.get("WINDIR", "C:\\Windows"), "Fonts"))
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSansCondensed.ttf", "LiberationSans-Regular.ttf", "Arial.ttf",
              "arial.ttf", "Helvetica.ttc", "NotoSans-Regular.ttf", "FreeSans.ttf")
MAX_GRID_PIXELS = 64 << 20  # 64 Mpx per output frame: a grid larger than that is a mistake


@dataclass(frozen=True)
class GridLayout:
    columns: int
    rows: int = 1
    labels_x: tuple[str, ...] = ()
    labels_y: tuple[str, ...] = ()
    title_x: str = ""
    title_y: str = ""
    cell_text: tuple[str, ...] = ()   # one per cell (reading order), or none
    font_size: int = 16
    gap: int = 4
    background: float = 1.0
    ink: float = 0.0

    def __post_init__(self):
        if self.columns < 1 or self.rows < 1:
            raise PatchbayError(f"a grid needs at least 1×1 cells, got {self.columns}×{self.rows}")
        for name, labels, n in (("column", self.labels_x, self.columns), ("row", self.labels_y, self.rows),
                                ("cell", self.cell_text, self.columns * self.rows)):
            if labels and len(labels) != n:
                raise PatchbayError(f"the grid has {n} {name}s but {len(labels)} {name} labels",
                                    fix=f"give one label per {name}, or none")

    @property
    def cells(self) -> int:
        return self.columns * self.rows


# ----------------------------------------------------------------- text

def find_system_font() -> Optional[str]:
    """Path of a TrueType font on disk, or None (searched once per process)."""
    return _find_font()


@lru_cache(maxsize=1)
def _find_font() -> Optional[str]:
    env = os.environ.get("PATCHBAY_FONT")
    if env and os.path.isfile(env):
        return env
    for root in FONT_DIRS:
        if not os.path.isdir(root):
            continue
        for dirpath, _, names in os.walk(root):
            for wanted in FONT_NAMES:
                if wanted in names:
                    return os.path.join(dirpath, wanted)
    return None


@lru_cache(maxsize=8)
def _pil_font(size: int):
    try:
        from PIL import ImageFont
    except ImportError:
        return None
    path = _find_font()
    if path is None:
        return None
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return None


class TextRenderer:
    """Text → coverage mask (h, w) float in [0, 1]; Pillow+TrueType or the bitmap font."""

    def __init__(self, size: int, use_system_font: bool = True):
        self.size = max(6, int(size))
        self.font = _pil_font(self.size) if use_system_font else None
        self.scale = max(1, round(self.size / grid_font.HEIGHT))

    @property
    def backend(self) -> str:
        return "truetype" if self.font is not None else "bitmap"

    @property
    def line_height(self) -> int:
        if self.font is not None:
            ascent, descent = self.font.getmetrics()
            return ascent + descent
        return grid_font.HEIGHT * self.scale

    def width(self, text: str) -> int:
        if self.font is not None:
            return int(self.font.getlength(text) + 0.999)
        return len(text) * grid_font.WIDTH * self.scale

    def fit(self, text: str, width: int) -> str:
        """``text`` on one line, cut with an ellipsis to fit ``width`` pixels."""
        text = " ".join(str(text).split())
        if self.font is None:
            text = "".join(ch if 32 <= ord(ch) <= 126 else "?" for ch in text)
        if self.width(text) <= width:
            return text
        dots = "…" if self.font is not None else "..."
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.width(text[:mid] + dots) <= width:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo] + dots if lo else ""

    def wrap(self, text: str, width: int, max_lines: int = 4) -> list[str]:
        lines: list[str] = []
        for para in str(text).splitlines() or [""]:
            current = ""
            for word in para.split():
                trial = f"{current} {word}".strip()
                if self.width(trial) <= width or not current:
                    current = trial
                else:
                    lines.append(current)
                    current = word
            lines.append(current)
        if len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = lines[-1] + " …"
        return [self.fit(line, width) for line in lines]

    def render(self, text: str) -> Tensor:
        """Coverage mask of one line of text, (line_height, width)."""
        h, w = self.line_height, max(1, self.width(text))
        if self.font is not None:
            from PIL import Image, ImageDraw
            img = Image.new("L", (w, h), 0)
            ImageDraw.Draw(img).text((0, 0), text, font=self.font, fill=255)
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            return data.view(h, w).float() / 255.0
        mask = torch.zeros(grid_font.HEIGHT, len(text) * grid_font.WIDTH)
        for i, ch in enumerate(text):
            for r, bits in enumerate(grid_font.glyph_rows(ch)):
                for c in range(grid_font.WIDTH):
                    if bits >> (grid_font.WIDTH - 1 - c) & 1:
                        mask[r, i * grid_font.WIDTH + c] = 1.0
        if self.scale > 1:
            mask = mask.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)
        return mask


def _draw(canvas: Tensor, mask: Tensor, top: int, left: int, ink: float) -> None:
    """Blend ``mask`` into ``canvas`` (H, W, C) at (top, left), clipped to the canvas."""
    H, W = canvas.shape[:2]
    h, w = mask.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + h, H), min(left + w, W)
    if t1 <= t0 or l1 <= l0:
        return
    m = mask[t0 - top:t1 - top, l0 - left:l1 - left].unsqueeze(-1).to(canvas.dtype)
    region = canvas[t0:t1, l0:l1]
    channels = region.shape[-1]
    colour = region.new_full((channels,), ink)
    if channels in (2, 4):
        colour[-1] = 1.0  # alpha stays opaque
    region.mul_(1 - m).add_(m * colour)


def _text(canvas: Tensor, r: TextRenderer, text: str, top: int, left: int, width: int, ink: float,
          align: str = "center") -> None:
    text = r.fit(text, width)
    if not text:
        return
    mask = r.render(text)
    if align == "center":
        left += max(0, (width - mask.shape[1]) // 2)
    _draw(canvas, mask, top, left, ink)


# ----------------------------------------------------------------- layout

@dataclass(frozen=True)
class _Geometry:
    cell_h: int
    cell_w: int
    left: int          # width of the row-label band
    top: int           # height of title + column-label bands
    title_h: int
    text_h: int        # height of the per-cell text band
    height: int
    width: int

    def cell_origin(self, layout: GridLayout, i: int) -> tuple[int, int]:
        row, col = divmod(i, layout.columns)
        y = self.top + row * (self.cell_h + self.text_h + layout.gap)
        x = self.left + col * (self.cell_w + layout.gap)
        return y, x


def _small(r: TextRenderer) -> TextRenderer:
    """The renderer of per-cell text: three quarters of the label size (stacks are long)."""
    return TextRenderer(max(8, r.size * 3 // 4), r.font is not None)


def _geometry(layout: GridLayout, r: TextRenderer, cell_h: int, cell_w: int) -> tuple[_Geometry, list]:
    pad = max(2, r.line_height // 4)
    line = r.line_height
    small = _small(r)
    wrapped = [small.wrap(t, cell_w) for t in layout.cell_text] if layout.cell_text else []
    text_lines = max((len(w) for w in wrapped), default=0)
    text_h = text_lines * small.line_height + (pad if text_lines else 0)
    title_h = line + pad if (layout.title_x or layout.title_y) else 0
    labels_h = line + pad if layout.labels_x else 0
    row_texts = list(layout.labels_y) + ([layout.title_y] if layout.title_y and layout.labels_y else [])
    left = 0
    if layout.labels_y:
        # Wide enough for an axis title such as "glow strength" on small cells; long labels still get an ellipsis.
        left = min(max(r.width(t) for t in row_texts) + 2 * pad, max(cell_w, 10 * line))
    top = title_h + labels_h
    width = left + layout.columns * cell_w + (layout.columns - 1) * layout.gap
    height = top + layout.rows * (cell_h + text_h) + (layout.rows - 1) * layout.gap
    return _Geometry(cell_h, cell_w, left, top, title_h, text_h, height, width), wrapped


def _canvas(layout: GridLayout, cell_h: int, cell_w: int, channels: int, dtype, device,
            use_system_font: bool) -> tuple[Tensor, _Geometry]:
    """The background with every label drawn, and where the cells go."""
    r = TextRenderer(layout.font_size, use_system_font)
    g, wrapped = _geometry(layout, r, cell_h, cell_w)
    if g.height * g.width > MAX_GRID_PIXELS:
        raise PatchbayError(f"the grid would be {g.width}×{g.height} pixels, over the limit of "
                            f"{MAX_GRID_PIXELS >> 20} Mpx", fix="use fewer or smaller cells")
    canvas = torch.full((g.height, g.width, channels), layout.background, dtype=torch.float32)
    if channels in (2, 4):
        canvas[..., -1] = 1.0
    pad = max(2, r.line_height // 4)
    line = r.line_height
    if layout.title_x:
        _text(canvas, r, layout.title_x, pad // 2, g.left, g.width - g.left, layout.ink)
    if layout.title_y:
        if g.left:  # above the row labels
            _text(canvas, r, layout.title_y, pad // 2 + (g.title_h if layout.labels_x else 0), 0, g.left,
                  layout.ink)
        else:
            _text(canvas, r, layout.title_y, pad // 2, 0, g.width, layout.ink, align="left")
    for col, label in enumerate(layout.labels_x):
        _, x = g.cell_origin(layout, col)
        _text(canvas, r, label, g.title_h + pad // 2, x, g.cell_w, layout.ink)
    for row, label in enumerate(layout.labels_y):
        y, _ = g.cell_origin(layout, row * layout.columns)
        _text(canvas, r, label, y + (g.cell_h - line) // 2, pad, g.left - 2 * pad, layout.ink)
    small = _small(r)
    for i, lines in enumerate(wrapped):
        y, x = g.cell_origin(layout, i)
        for k, text in enumerate(lines):
            _text(canvas, small, text, y + g.cell_h + pad // 2 + k * small.line_height, x, g.cell_w, layout.ink)
    return canvas.to(device=device, dtype=dtype), g


def _cells_of(images: Sequence[Tensor], layout: GridLayout) -> list[Tensor]:
    """Each cell as (F, H, W, C); checks count and sizes."""
    cells = []
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() not in (3, 4):
            raise ShapeMismatchError(f"grid cell {i + 1} is not an image (B, H, W, C) tensor",
                                     fix="connect IMAGE outputs")
        cells.append(img if img.dim() == 4 else img.unsqueeze(0))
    if len(cells) != layout.cells:
        raise ShapeMismatchError(f"the grid has {layout.columns}×{layout.rows} = {layout.cells} cells but "
                                 f"{len(cells)} images came in",
                                 fix="feed one image (or clip) per sweep value")
    shape = tuple(cells[0].shape[1:])
    for i, c in enumerate(cells):
        if tuple(c.shape[1:]) != shape:
            raise ShapeMismatchError(f"grid cell {i + 1} is {tuple(c.shape[1:3])} pixels with {c.shape[3]} "
                                     f"channels; cell 1 is {shape[:2]} with {shape[2]}",
                                     fix="render every cell at the same size")
    return cells


def grid_image(images: Sequence[Tensor], layout: GridLayout, use_system_font: bool = True) -> Tensor:
    """One labelled grid (1, H', W', C) from one image per cell (each (H, W, C) or (1, H, W, C))."""
    cells = _cells_of(images, layout)
    frames = grid_video([c[:1] for c in cells], layout, use_system_font)
    return frames[:1]


def grid_video(clips: Sequence[Tensor], layout: GridLayout, use_system_font: bool = True) -> Tensor:
    """Labelled comparison video (F, H', W', C): frame f tiles frame f of every cell.

    F is the longest clip; a shorter clip holds its last frame.
    """
    cells = _cells_of(clips, layout)
    _, h, w, ch = cells[0].shape
    canvas, g = _canvas(layout, h, w, ch, cells[0].dtype, cells[0].device, use_system_font)
    frames = max(c.shape[0] for c in cells)
    out = canvas.unsqueeze(0).repeat(frames, 1, 1, 1)
    for i, clip in enumerate(cells):
        y, x = g.cell_origin(layout, i)
        n = clip.shape[0]
        out[:n, y:y + h, x:x + w] = clip.clamp(0, 1)
        if n < frames:
            out[n:, y:y + h, x:x + w] = clip[-1].clamp(0, 1)
    return out


def split_batch(images: Tensor, cells: int) -> list[Tensor]:
    """A batch of ``cells × F`` frames (cell-major) → one (F, H, W, C) clip per cell."""
    if images.dim() != 4 or images.shape[0] % cells:
        raise ShapeMismatchError(f"a batch of {images.shape[0] if images.dim() == 4 else '?'} images does not "
                                 f"split into {cells} cells", fix="give cells × frames images, cell by cell")
    per = images.shape[0] // cells
    return [images[i * per:(i + 1) * per] for i in range(cells)]


# ----------------------------------------------------------------- PNG

def to_uint8(image: Tensor) -> Tensor:
    """(H, W, C) float [0, 1] (or uint8) → (H, W, C) uint8 on the CPU."""
    if image.dim() == 4:
        image = image[0]
    if image.dtype == torch.uint8:
        return image.cpu().contiguous()
    return (image.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().contiguous()


def _raw_bytes(data: Tensor) -> bytes:
    try:
        return data.numpy().tobytes()
    except (RuntimeError, TypeError):  # torch built without numpy
        return bytes(data.reshape(-1).tolist())


def png_bytes(image: Tensor, use_pillow: bool = True) -> bytes:
    """PNG of an (H, W, C) image, C in 1, 3, 4 (8 bits per channel)."""
    data = to_uint8(image)
    h, w, c = data.shape
    if c not in (1, 3, 4):
        raise ShapeMismatchError(f"a PNG needs 1, 3 or 4 channels, the image has {c}")
    if use_pillow:
        try:
            from PIL import Image
        except ImportError:
            use_pillow = False
    if use_pillow:
        import io
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
        img = Image.frombytes(mode, (w, h), _raw_bytes(data))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        return buf.getvalue()
    colour_type = {1: 0, 3: 2, 4: 6}[c]
    raw = bytearray()
    flat = _raw_bytes(data)
    stride = w * c
    for y in range(h):
        raw.append(0)  # filter type None per scanline
        raw += flat[y * stride:(y + 1) * stride]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))


def read_png(data: bytes, use_pillow: bool = True) -> Tensor:
    """An image file's pixels as (H, W, 3) float [0, 1]: Pillow for any format, else 8-bit PNG via zlib."""
    if use_pillow:
        try:
            from PIL import Image
        except ImportError:
            use_pillow = False
    if use_pillow:
        import io
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as e:  # Pillow raises many types for bad bytes
            raise ShapeMismatchError(f"cannot decode the image ({str(e)[:120]})") from None
        img = img.convert("RGB")
        flat = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return flat.view(img.height, img.width, 3).float() / 255.0
    return _read_png_zlib(data)


def _read_png_zlib(data: bytes) -> Tensor:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ShapeMismatchError("not a PNG file (and Pillow, which reads other formats, is not installed)")
    pos, idat, ihdr = 8, bytearray(), None
    while pos + 8 <= len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        elif kind == b"IEND":
            break
        pos += 12 + n
    if ihdr is None:
        raise ShapeMismatchError("PNG without an IHDR chunk")
    w, h, depth, ctype, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or channels is None or interlace:
        raise ShapeMismatchError(f"PNG of bit depth {depth}, colour type {ctype}, interlace {interlace} needs Pillow")
    try:
        raw = zlib.decompress(bytes(idat))
    except zlib.error as e:
        raise ShapeMismatchError(f"corrupt PNG data ({e})") from None
    stride = w * channels
    if len(raw) < h * (stride + 1):
        raise ShapeMismatchError("truncated PNG data")
    out = bytearray(h * stride)
    prev = bytearray(stride)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):  # the five PNG filters, undone per byte
            a = line[x - channels] if x >= channels else 0
            b = prev[x]
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif ftype == 4:
                c = prev[x - channels] if x >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y * stride:(y + 1) * stride] = line
        prev = line
    img = torch.frombuffer(out, dtype=torch.uint8).view(h, w, channels).float() / 255.0
    if channels in (1, 2):
        img = img[..., :1].expand(h, w, 3)
    return img[..., :3].contiguous()


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".patchbay-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_png(path: str, image: Tensor, use_pillow: bool = True) -> None:
    write_atomic(path, png_bytes(image, use_pillow))


__all__ = ["GridLayout", "TextRenderer", "grid_image", "grid_video", "split_batch", "png_bytes",
           "write_png", "write_atomic", "read_png", "find_system_font"]
