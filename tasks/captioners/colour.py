"""Colour and light in words: dominant colours, brightness, black-and-white, plain fields."""
from __future__ import annotations

import colorsys

from PIL import Image, ImageChops, ImageStat

# A picture is black-and-white when fewer than this share of its pixels carry colour
# (saturation and value both clear of grey): a screenshot with red text is not.
COLOURFUL_SHARE = 0.001
_COLOURFUL_SATURATION = 60  # of 255
_COLOURFUL_VALUE = 50


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
    base = _hue_name(h * 360)
    if base in {"orange", "yellow", "red"} and light < 0.35:
        return "brown" if base != "red" else "dark red"
    if base == "blue" and light > 0.6:
        return "sky blue" if s > 0.4 else "pale blue"
    if light < 0.3:
        return f"dark {base}"
    if light > 0.72:
        return f"light {base}" if base != "red" else "pink"
    return base


def _hue_name(deg: float) -> str:
    for limit, name in ((15, "red"), (40, "orange"), (66, "yellow"), (160, "green"), (195, "teal"),
                        (255, "blue"), (320, "purple"), (345, "pink")):
        if deg < limit:
            return name
    return "red"


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


def brightness_word(img: Image.Image) -> str:
    mean = ImageStat.Stat(img.convert("L")).mean[0]
    for limit, word in ((50, "very dark"), (100, "dark"), (165, "softly lit"), (215, "bright")):
        if mean < limit:
            return word
    return "very bright"


def is_monochrome(img: Image.Image) -> bool:
    """Black-and-white (or one tint of grey): almost no pixel carries a visible colour."""
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    small = img.convert("RGB")
    small.thumbnail((256, 256))
    hsv = small.convert("HSV")
    sat = hsv.getchannel("S").point(lambda v: 255 if v >= _COLOURFUL_SATURATION else 0)
    val = hsv.getchannel("V").point(lambda v: 255 if v >= _COLOURFUL_VALUE else 0)
    colourful = ImageChops.multiply(sat, val).histogram()[255]  # 255 where both are 255
    return colourful < COLOURFUL_SHARE * small.width * small.height


def plain_colour(img: Image.Image) -> str | None:
    """The colour's name when the picture is one flat colour (nothing else to say), else None."""
    stat = ImageStat.Stat(img.convert("RGB"))
    if max(stat.stddev) > 6:
        return None
    return colour_name(tuple(int(round(m)) for m in stat.mean))  # type: ignore[arg-type]


def join_words(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def colour_phrase(img: Image.Image) -> str:
    """ "mostly orange and brown with some grey" (empty when nothing stands out)."""
    colours = dominant_colours(img)
    if not colours:
        return ""
    main = [n for n, s in colours if s >= 0.25] or [colours[0][0]]
    rest = [n for n, _ in colours if n not in main][:2]
    phrase = f"mostly {join_words(main)}"
    return phrase + (f" with some {join_words(rest)}" if rest else "")
