"""Opening one uploaded image with bounded work: a pixel cap, downscaled decoding, guarded metadata.

Every captioner that looks at pixels starts here. The pixel count is checked
from the header before anything is decoded (a decompression bomb never
reaches the decoder); JPEGs are decoded at a reduced scale (``Image.draft``,
1/2 to 1/8 of the size, far less memory and time), other formats are
reduced right after decoding, so the stages only see an RGB picture whose
longer side is at most ``max_side``. Anything Pillow raises while doing so
(a truncated file, a TIFF whose second IFD lacks its dimensions, ...) makes
this one image unreadable.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tasks.captioners import ImageUnreadable
from tasks.captioners.metadata import embedded_description

# Pillow's own bomb guard, kept at least as tight as before; the caller's cap is tighter.
Image.MAX_IMAGE_PIXELS = 90_000_000
DEFAULT_MAX_PIXELS = 50_000_000
ANALYSIS_SIDE = 2048  # the stages never need more than this (OCR looks at up to 2000 px)
_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclass
class Picture:
    """What the stages look at: a downscaled RGB copy and facts read from the file."""

    rgb: Image.Image          # orientation applied, longer side <= max_side
    width: int                # as stored in the file
    height: int
    animated: bool
    description: str | None   # what the author embedded (software junk left out)


def load_picture(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_side: int = ANALYSIS_SIDE) -> Picture:
    """Open, check and decode ``path`` downscaled; :class:`ImageUnreadable` for any failure."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
            with Image.open(path) as img:
                return _decode(img, max_pixels, max_side)
    except ImageUnreadable:
        raise
    except MemoryError as exc:
        raise ImageUnreadable("cannot read image: it needs more memory than a caption may use") from exc
    except Exception as exc:  # noqa: BLE001 - whatever a crafted file makes Pillow raise fails this image
        raise ImageUnreadable(f"cannot read image: {type(exc).__name__}: {exc}") from exc


def _decode(img: Image.Image, max_pixels: int, max_side: int) -> Picture:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageUnreadable("cannot read image: it has no pixels")
    if width * height > max_pixels:
        raise ImageUnreadable(f"image has {width * height:,} pixels; at most {max_pixels:,} are read")
    description = embedded_description(img)
    animated = _animated(img)
    if img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))  # decode at 1/2..1/8 scale when that still covers max_side
    img.load()
    small = _to_rgb(_reduce(img, max_side))
    turn = _TRANSPOSE.get(_orientation(img))
    if turn is not None:
        small = small.transpose(turn)
    return Picture(rgb=small, width=width, height=height, animated=animated, description=description)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: show the pixels as stored
        return 1


def _animated(img: Image.Image) -> bool:
    """Whether there is a second frame (one seek; never counts the frames of a 10 000-frame GIF)."""
    try:
        return bool(getattr(img, "is_animated", False))
    except Exception:  # noqa: BLE001 - a broken later frame does not make the first unreadable
        return False


def _reduce(img: Image.Image, max_side: int) -> Image.Image:
    longer = max(img.size)
    if longer <= max_side:
        return img.copy()
    if img.mode == "1":
        img = img.convert("L")  # one byte a pixel, and reducible
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    factor = longer // max_side
    if factor >= 2 and img.mode in ("L", "RGB", "RGBA", "LA", "I", "F"):
        img = img.reduce(factor)  # box filter over whole blocks: cheap and exact
    small = img.copy()
    small.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return small


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited over white (how most viewers show it)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        base = Image.new("RGB", img.size, (255, 255, 255))
        base.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return base
    if img.mode.startswith(("I", "F")):  # 16/32-bit greys: scale to 0..255 first
        high = float(img.getextrema()[1] or 0)
        img = img.convert("F")
        if high > 255:
            img = img.point(lambda v: v * 255.0 / high)
        return img.convert("L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")
