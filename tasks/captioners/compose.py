"""Putting the stages' findings into alt text: short sentences, most useful first, at most 1 500 characters."""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from tasks.captioners import MAX_CAPTION_CHARS
from tasks.captioners.colour import brightness_word, colour_phrase, is_monochrome

ELLIPSIS = "\u2026"
# A picture with at least TEXT_MIN_CHARS of text is "mostly text" when the text boxes cover
# TEXT_SHARE of it, or the classifier sees text (a web page, a menu) or nothing confidently.
TEXT_SHARE = 0.04
TEXT_MIN_CHARS = 20
FLAT_SHARE = 0.3  # one exact colour on this share of the pixels: drawn on a screen, not photographed


@dataclass
class Findings:
    """What the stages found in one picture (None: the stage did not run or found nothing)."""

    text_lines: list[str] = field(default_factory=list)
    text_share: float = 0.0
    seen_name: str | None = None
    seen_confident: bool = False
    seen_group: str | None = None
    faces: int = 0
    description: str | None = None
    colour: str | None = None
    kind: str | None = None  # "A screenshot" / "A document" when the picture is mostly text


def mostly_text(found: Findings) -> bool:
    chars = sum(len(line) for line in found.text_lines)
    return chars >= TEXT_MIN_CHARS and (found.text_share >= TEXT_SHARE or found.seen_group == "text"
                                         or not found.seen_confident)


def text_kind(rgb: Image.Image) -> str:
    """ "A screenshot" when flat colours dominate (drawn by a computer), else "A document"."""
    small = rgb.resize((min(rgb.width, 256), min(rgb.height, 256)), Image.Resampling.NEAREST)
    colours = small.getcolors(maxcolors=small.width * small.height) or []
    top = max((n for n, _ in colours), default=0)
    return "A screenshot" if top >= FLAT_SHARE * small.width * small.height else "A document"


def colour_sentence(rgb: Image.Image) -> str:
    """ "Softly lit, mostly orange with some brown." """
    light = brightness_word(rgb)
    if is_monochrome(rgb):
        return f"In black and white, {light}."
    phrase = colour_phrase(rgb)
    return f"{light[0].upper()}{light[1:]}" + (f", {phrase}." if phrase else ".")


def opening(found: Findings) -> str:
    if found.kind:
        head = found.kind
    elif found.seen_name:
        head = f"A picture of {found.seen_name}" if found.seen_confident else \
            f"A picture that may show {found.seen_name}"
    elif found.faces:
        head = "A picture"
    else:
        return ""
    comma = "," if head != "A picture" else ""
    if found.faces == 1:
        head += f"{comma} with one person's face visible"
    elif found.faces > 1:
        head += f"{comma} with {found.faces} people's faces visible"
    return head + "."


def quote(label: str, text: str) -> str:
    return f'{label}: "{text}".'


def compose(found: Findings, limit: int = MAX_CAPTION_CHARS) -> str:
    """The caption: what it is, the text in it, the author's description, colour and light."""
    head = opening(found)
    tail = [quote("Embedded description", found.description) if found.description else "",
            found.colour or ""]
    parts = [head, *tail]
    if found.text_lines:
        room = limit - len(" ".join(p for p in parts if p)) - len(' Text in the image: "".')
        text = shorten("\n".join(found.text_lines), max(room, 0))
        if text:
            parts.insert(1, quote("Text in the image", text))
    return trim(" ".join(p for p in parts if p), limit)


def shorten(text: str, limit: int) -> str:
    """``text`` cut at a word to at most ``limit`` characters (an ellipsis marks the cut)."""
    if len(text) <= limit:
        return text
    if limit < 2:
        return ""
    cut = text[:limit - 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:space] if space > 0 else cut).rstrip() + ELLIPSIS


def trim(text: str, limit: int = MAX_CAPTION_CHARS) -> str:
    """At most ``limit`` characters, cut after a sentence when one ends late enough, else at a word."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind(". ")
    if end >= limit // 2:
        return cut[:end + 1]
    return shorten(text, limit)
