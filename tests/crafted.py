"""Hostile image files for the tests of issue 16 (items 1-3), made here byte by byte."""
from __future__ import annotations

import io
import struct
from pathlib import Path

from PIL import Image, PngImagePlugin

XMP_OPENING = "<dc:description><rdf:li>"


def xmp_bomb(path: Path, repeats: int = 3000) -> Path:
    """A PNG whose XMP packet repeats ``<dc:description><rdf:li>`` (about 72 KB at 3 000):
    the old nested lazy DOTALL regex took cubic time over it (9 s at 600 repetitions)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + XMP_OPENING * repeats)
    img = Image.new("RGB", (64, 48), (30, 160, 60))
    img.paste((240, 220, 40), (0, 0, 32, 48))
    img.save(path, pnginfo=info)
    return path


def tiff_with_bad_second_ifd(path: Path) -> Path:
    """A valid 8x8 TIFF whose next-IFD pointer leads to an IFD without ImageWidth/ImageLength:
    Pillow's ``n_frames`` raises TypeError on it."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    assert data[:2] == b"II"
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    next_pointer = first + 2 + 12 * count
    second = len(data)
    # One entry (PhotometricInterpretation = RGB), no dimensions, no further IFD.
    data += struct.pack("<H", 1) + struct.pack("<HHII", 262, 3, 1, 2) + struct.pack("<I", 0)
    struct.pack_into("<I", data, next_pointer, second)
    path.write_bytes(bytes(data))
    return path


def many_frames_gif(path: Path, frames: int = 10_000) -> Path:
    """A GIF of ``frames`` tiny frames (a few hundred KB)."""
    base = Image.new("P", (4, 4), 0)
    base.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    others = []
    for i in range(frames - 1):
        frame = base.copy()
        frame.putpixel((i % 4, (i // 4) % 4), 1)
        others.append(frame)
    base.save(path, save_all=True, append_images=others, duration=20, loop=0, optimize=False)
    return path


def truncated_png(path: Path) -> Path:
    """A PNG whose pixel data stops half-way (the header and first chunks are intact)."""
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 80).convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def pixel_bomb(path: Path, side: int = 13_000) -> Path:
    """``side`` x ``side`` 1-bit pixels of zeros in a few tens of KB."""
    Image.new("1", (side, side), 0).save(path)
    return path


def slow_png(path: Path, side: int = 7000) -> Path:
    """A legal image (49 Mpx RGB zeros, ~140 KB) that takes a few tenths of a second to decode."""
    Image.new("RGB", (side, side), (0, 0, 0)).save(path, compress_level=9)
    return path
