"""The Pillow-only captioner: what the pixels and the file's metadata can honestly say.

It names the brightness, the dominant colours in words, whether the image
is black-and-white or animated, and quotes a description the author
embedded (``tasks/captioners/metadata.py``; software junk is left out). It
never invents content and leaves out what is noise in alt text (the
orientation, the pixel size).
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from tasks.captioners import CaptionCancelled, Captioned, StopCheck
from tasks.captioners.colour import brightness_word, colour_phrase, is_monochrome, plain_colour
from tasks.captioners.picture import DEFAULT_MAX_PIXELS, Picture, load_picture


def light_and_colour(img: Image.Image, animated: bool = False) -> str:
    """One sentence: "A softly lit image, mostly orange with some brown." """
    plain = plain_colour(img)
    kind = "animated image" if animated else "image"
    if plain is not None:
        return f"A plain {plain} {kind}."
    if is_monochrome(img):
        kind = "black-and-white " + kind
    light = brightness_word(img)
    article = "An" if light[0] in "aeiou" else "A"
    phrase = colour_phrase(img) if "black-and-white" not in kind else ""
    return f"{article} {light} {kind}" + (f", {phrase}" if phrase else "") + "."


def quoted_description(description: str | None) -> str:
    return f'Embedded description: "{description}".' if description else ""


def describe_picture(picture: Picture) -> Captioned:
    sentences = [light_and_colour(picture.rgb, picture.animated), quoted_description(picture.description)]
    stages = ("colour", "metadata") if picture.description else ("colour",)
    return Captioned(" ".join(s for s in sentences if s), "basic", stages)


def describe(img: Image.Image) -> str:
    """The caption for an already opened image (tests and tools)."""
    return light_and_colour(img.convert("RGB") if img.mode != "RGB" else img)


class BasicCaptioner:
    """Offline, deterministic captions from pixels and metadata."""

    name = "basic"

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = max_pixels

    def caption(self, path: Path, should_stop: StopCheck) -> Captioned:
        picture = load_picture(path, self.max_pixels)
        if should_stop():
            raise CaptionCancelled("cancelled")
        return describe_picture(picture)
