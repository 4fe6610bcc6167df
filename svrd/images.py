"""Image decoding: every image becomes RGB PNG bytes once, at filter time.

The published SVRD code fed images in whatever mode the file had (palette, alpha), so
training and evaluation saw different pixels. We convert once and store the result.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageFile

from svrd.errors import RecordError

DEFAULT_MAX_PIXELS = 25_000_000


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is composited on white (as ScienceQA renders)."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L"):
        # 16-bit grayscale: map the full 0..65535 range onto 0..255 (Pillow's own convert clips).
        import numpy as np

        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(arr.round().clip(0, 255).astype("uint8"))
    elif img.mode in ("I", "F"):
        # 32-bit integer/float: no fixed range, so scale by the maximum rather than clipping to white.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        arr = (arr / hi * 255.0) if hi > 0 else arr
        img = Image.fromarray(arr.clip(0, 255).astype("uint8"))
    if img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info:
        # a tRNS colour (palette, grayscale or RGB PNGs): make it an alpha channel first
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def decode_rgb(data: bytes, pid: str | None, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB image, with a clear error naming pid and field."""
    return _decode(data, pid, field, max_pixels)[0]


def _decode(data: bytes, pid: str | None, field: str, max_pixels: int) -> tuple[Image.Image, bool]:
    """(RGB image, whether `data` already was a plain RGB PNG that needs no re-encoding)."""
    if not data:
        raise RecordError(pid, field, "image file is empty (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # max_pixels below is the limit; Pillow's own warning past 89M pixels is noise here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        with opened as img:
            width, height = img.size
            if width * height > max_pixels:
                raise RecordError(
                    pid, field, f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
            rgb = to_rgb(img)
            return rgb, (rgb is img and img.format == "PNG")
    except RecordError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RecordError(pid, field, f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise RecordError(pid, field, f"image cannot be decoded ({type(exc).__name__}: {exc})") from None


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # zlib level 1: encoding dominated filter's time at level 6 (3.9x slower on a full-size
    # release) for files about 15% smaller; the pixels are the same.
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def normalize_image(data: bytes, pid: str | None, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Any image bytes in, RGB PNG bytes out (or RecordError).

    A file that already is an RGB PNG without transparency is kept byte for byte (after a full
    decode proves it sound): re-encoding it would cost time and change nothing."""
    rgb, already_rgb_png = _decode(data, pid, field, max_pixels)
    return data if already_rgb_png else png_bytes(rgb)


def open_png(data: bytes) -> Image.Image:
    """Open PNG bytes already normalized by filter (RGB, size-checked)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")
