"""Thumbnails of uploaded images: made once by the web process on first request, then cached.

A thumbnail is a JPEG whose longer side is at most :data:`SIDE` px, written
beside the uploads (``UPLOAD_DIR/thumbs/``) and recorded in
``Image.thumbnail``. The original file is never sent to anyone.

Decoding is CPU work that would stall every other connection of a gevent
process, so it runs in gevent's thread pool there (plain call otherwise), at
most :data:`CONCURRENCY` at a time, and images past :data:`MAX_PIXELS` are not
decoded at all (a decompression bomb gets no preview).
"""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from web.offloop import off_loop

SIDE = 320            # longest side of a thumbnail (PROTOCOL.md: at most 320 px)
MAX_PIXELS = 50_000_000  # larger images get no preview (decoding them costs seconds and GBs)
QUALITY = 82
CONCURRENCY = 2       # thumbnails decoded at once per web process (memory and CPU bound)
MIME = "image/jpeg"

_slots = threading.BoundedSemaphore(CONCURRENCY)  # gevent's own under monkey patching


class NoPreview(Exception):
    """The image cannot be made into a thumbnail (unreadable, or too many pixels)."""


def render(source: Path, dest_dir: Path) -> tuple[Path, int, int]:
    """Write the thumbnail of ``source`` into ``dest_dir``; ``(path, width, height)`` of the original.

    The file appears whole or not at all (written aside, then renamed).
    """
    try:
        with PILImage.open(source) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise NoPreview(f"the image is too large to preview ({width}x{height})")
            img.draft("RGB", (SIDE, SIDE))  # JPEG: decode at a fraction of the size
            small = ImageOps.exif_transpose(img)
            small.thumbnail((SIDE, SIDE), PILImage.Resampling.LANCZOS, reducing_gap=2.0)
            small = _flatten(small)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            PILImage.DecompressionBombError) as exc:
        raise NoPreview("the image could not be read") from exc
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / f"{uuid.uuid4().hex}.jpg"
    partial = final.with_suffix(".part")
    try:
        small.save(partial, "JPEG", quality=QUALITY, optimize=True)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final, width, height


def _flatten(img: PILImage.Image) -> PILImage.Image:
    """RGB for JPEG: transparency over white, palettes and greyscale expanded."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = PILImage.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def make(source: Path, dest_dir: Path) -> tuple[Path, int, int]:
    """:func:`render` off the event loop, at most :data:`CONCURRENCY` at a time."""
    with _slots:
        return off_loop(render, source, dest_dir)


def cached(path: str | None) -> bytes | None:
    """The bytes of a cached thumbnail, or None when there is none (or it was removed)."""
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:
        return None
