"""The offline captioner: what Pillow can honestly say about an image.

It names the orientation and size, the dominant colours in words, the
brightness, whether the image is black-and-white or animated, and quotes any
description embedded by the author (EXIF ImageDescription/XPComment/
UserComment, PNG text chunks, XMP dc:description). It never invents content.
"""
from __future__ import annotations

import colorsys
import re
from pathlib import Path

from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from tasks.captioners import ImageUnreadable, StopCheck

# Pillow refuses images beyond this many pixels (decompression bombs).
Image.MAX_IMAGE_PIXELS = 90_000_000

_EXIF_DESCRIPTION = 0x010E
_EXIF_XPTITLE = 0x9C9B
_EXIF_XPCOMMENT = 0x9C9C
_EXIF_IFD = 0x8769
_EXIF_USERCOMMENT = 0x9286
_XMP_DESCRIPTION = re.compile(
    r"<dc:description>.*?<rdf:li[^>]*>(.*?)</rdf:li>", re.DOTALL | re.IGNORECASE)
_XMP_ATTR = re.compile(r'dc:description="([^"]+)"', re.IGNORECASE)
_PNG_TEXT_KEYS = ("Description", "Title", "Comment", "comment", "description", "title")


def colour_name(rgb: tuple[int, int, int]) -> str:
    """A plain-English name for an RGB colour ("dark green", "light grey")."""
    r, g, b = (c / 255.0 for c in rgb)
    h, light, s = colorsys.rgb_to_hls(r, g, b)
    if s < 0.15 or (light < 0.12) or (light > 0.94):
        if light < 0.12:
            return "black"
        if light > 0.9:
            return "white"
        if light < 0.35:
            return "dark grey"
        if light > 0.7:
            return "light grey"
        return "grey"
    deg = h * 360
    if deg < 15 or deg >= 345:
        base = "red"
    elif deg < 40:
        base = "orange"
    elif deg < 66:
        base = "yellow"
    elif deg < 160:
        base = "green"
    elif deg < 195:
        base = "teal"
    elif deg < 255:
        base = "blue"
    elif deg < 320:
        base = "purple"
    else:
        base = "pink"
    if base in {"orange", "yellow", "red"} and light < 0.35:
        return "brown" if base != "red" else "dark red"
    if base == "blue" and light > 0.6:
        return "sky blue" if s > 0.4 else "pale blue"
    if light < 0.3:
        return f"dark {base}"
    if light > 0.72:
        return f"light {base}" if base != "red" else "pink"
    return base


def dominant_colours(img: Image.Image, count: int = 6, min_share: float = 0.08) -> list[tuple[str, float]]:
    """Colour names covering at least ``min_share`` of the image, largest first."""
    small = img.convert("RGB")
    small.thumbnail((96, 96))
    quant = small.quantize(colors=count, method=Image.Quantize.MEDIANCUT)
    palette = quant.getpalette() or []
    total = small.width * small.height
    shares: dict[str, float] = {}
    for n, idx in quant.getcolors(maxcolors=256) or []:
        rgb = tuple(palette[idx * 3: idx * 3 + 3])
        name = colour_name(rgb)  # type: ignore[arg-type]
        shares[name] = shares.get(name, 0.0) + n / total
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    return [(name, share) for name, share in ranked if share >= min_share]


def embedded_description(img: Image.Image) -> str | None:
    """A description the author embedded in the file, if any."""
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth failing the image
        exif = None
    if exif:
        for tag in (_EXIF_DESCRIPTION, _EXIF_XPCOMMENT, _EXIF_XPTITLE):
            text = _decode_tag(exif.get(tag))
            if text:
                return text
        try:
            text = _decode_user_comment(exif.get_ifd(_EXIF_IFD).get(_EXIF_USERCOMMENT))
        except Exception:  # noqa: BLE001
            text = None
        if text:
            return text
    for key in _PNG_TEXT_KEYS:
        value = img.info.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", "replace")
    if isinstance(xmp, str):
        match = _XMP_DESCRIPTION.search(xmp) or _XMP_ATTR.search(xmp)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return None


def _decode_tag(value: object) -> str | None:
    if isinstance(value, bytes):
        # XP* tags are UTF-16LE byte strings.
        value = value.decode("utf-16-le", "replace")
    if isinstance(value, tuple):
        value = bytes(value).decode("utf-16-le", "replace")
    if isinstance(value, str):
        value = value.strip("\x00 \t\r\n")
        return value or None
    return None


def _decode_user_comment(value: object) -> str | None:
    if isinstance(value, bytes):
        head, body = value[:8], value[8:]
        if head.startswith(b"UNICODE"):
            text = body.decode("utf-16", "replace")
        else:
            text = body.decode("utf-8", "replace")
        text = text.strip("\x00 \t\r\n")
        return text or None
    return _decode_tag(value)


def _brightness_word(mean: float) -> str:
    if mean < 50:
        return "very dark"
    if mean < 100:
        return "dark"
    if mean < 165:
        return "softly lit"
    if mean < 215:
        return "bright"
    return "very bright"


def _shape_word(w: int, h: int) -> str:
    ratio = w / h if h else 1.0
    if ratio >= 2.2:
        return "panoramic"
    if ratio > 1.1:
        return "landscape"
    if ratio < 1 / 2.2:
        return "tall"
    if ratio < 1 / 1.1:
        return "portrait"
    return "square"


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def describe(img: Image.Image) -> str:
    """The caption for an opened image."""
    frames = getattr(img, "n_frames", 1) or 1
    description = embedded_description(img)
    img = ImageOps.exif_transpose(img) or img
    w, h = img.size
    rgb = img.convert("RGB")
    mean_l = ImageStat.Stat(rgb.convert("L")).mean[0]
    sat = ImageStat.Stat(rgb.convert("HSV")).mean[1]
    mono = sat < 12
    kind = "animated image" if frames > 1 else ("black-and-white image" if mono else "image")
    shape = _shape_word(w, h)
    article = "An" if _brightness_word(mean_l)[0] in "aeiou" else "A"
    sentence = f"{article} {_brightness_word(mean_l)} {shape} {kind}, {w}\u00d7{h} pixels"
    colours = dominant_colours(rgb)
    if colours:
        main = [n for n, s in colours if s >= 0.25] or [colours[0][0]]
        rest = [n for n, _ in colours if n not in main][:3]
        sentence += f", mostly {_join(main)}"
        if rest:
            sentence += f" with some {_join(rest)}"
    sentence += "."
    if frames > 1:
        sentence += f" It has {frames} frames."
    if description:
        sentence += f' Embedded description: "{description[:500]}".'
    return sentence


class BasicCaptioner:
    """Offline, deterministic captions from pixels and metadata."""

    name = "basic"

    def caption(self, path: Path, should_stop: StopCheck) -> str:
        try:
            with Image.open(path) as img:
                img.load()
                return describe(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                Image.DecompressionBombError) as exc:
            raise ImageUnreadable(f"cannot read image: {exc}") from exc
