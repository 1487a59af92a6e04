"""Test images: a small solid PNG (the tests' kind) and a photo-sized JPEG."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


def photo(path: Path, size: tuple[int, int] = (1024, 768)) -> Path:
    """A photo-sized JPEG with gradients and shapes (so Pillow has real work to do)."""
    w, h = size
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(img)
    for i in range(12):
        colour = ((37 * i) % 255, (91 * i) % 255, (151 * i) % 255)
        draw.ellipse([(i * w // 14, (i * 53) % h // 2), (i * w // 14 + w // 5, (i * 53) % h // 2 + h // 3)],
                     fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(2))
    img.save(path, "JPEG", quality=88)
    return path


def small(path: Path, i: int = 0) -> Path:
    from tests.support import make_image

    return make_image(path, i)


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    photo_img = Image.linear_gradient("L").resize(size).convert("RGB")
    photo_img.save(buf, "JPEG", quality=85)
    return buf.getvalue()
