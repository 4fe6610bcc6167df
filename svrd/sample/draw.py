"""Drawing helpers for the sample images: fonts, arrows, PNG bytes.

Everything here is deterministic (Pillow's bundled font, no anti-aliasing randomness), so the
same call always gives the same pixels.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

SIZE = 128  # images are drawn at 128 x 128; every decisive detail survives a resize to 64 x 64
WHITE = (255, 255, 255)
BLACK = (20, 20, 20)
DARK = (60, 60, 60)

# Named colours used in text (questions, captions) and on the images. Strong, far apart hues.
COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 90, 220),
    "green": (30, 150, 40),
    "orange": (245, 130, 0),
    "purple": (130, 40, 170),
    "yellow": (235, 205, 0),
    "pink": (240, 100, 180),
    "teal": (0, 150, 150),
    "brown": (130, 80, 30),
    "gray": (140, 140, 140),
    "sky blue": (100, 180, 240),
}


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` px (the same on every machine with the same Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def canvas(background: tuple[int, int, int] = WHITE) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (SIZE, SIZE), background)
    return img, ImageDraw.Draw(img)


def text_size(draw: ImageDraw.ImageDraw, text: str, size: int) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font(size))
    return right - left, bottom - top


def centered_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int,
                  fill: tuple[int, int, int] = BLACK, clamp: bool = True, halo: bool = False) -> None:
    """Draw `text` centred on xy, kept inside the canvas when `clamp`; `halo` outlines it in white."""
    w, h = text_size(draw, text, size)
    x, y = xy[0] - w / 2, xy[1] - h / 2
    if clamp:
        x = min(max(x, 1), SIZE - 1 - w)
        y = min(max(y, 0), SIZE - 1 - h)
    left, top, _, _ = draw.textbbox((0, 0), text, font=font(size))
    extra = {"stroke_width": 1, "stroke_fill": WHITE} if halo else {}
    draw.text((round(x - left), round(y - top)), text, fill=fill, font=font(size), **extra)


def arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float],
          fill: tuple[int, int, int] = BLACK, width: int = 3, head_len: float = 12, head_half: float = 7) -> None:
    """A thick line from start to end with a big filled head at `end`."""
    (x0, y0), (x1, y1) = start, end
    d = math.hypot(x1 - x0, y1 - y0) or 1.0
    ux, uy = (x1 - x0) / d, (y1 - y0) / d
    bx, by = x1 - ux * head_len, y1 - uy * head_len
    draw.line([(x0, y0), (bx, by)], fill=fill, width=width)
    px, py = -uy, ux
    draw.polygon([(x1, y1), (bx + px * head_half, by + py * head_half), (bx - px * head_half, by - py * head_half)],
                 fill=fill)


def png_bytes(img: Image.Image) -> bytes:
    """RGB PNG bytes with no metadata (byte-identical for identical pixels)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
