"""Captioners: turn one image file into alt text behind one small interface.

``basic`` (the default) is offline and uses Pillow only; ``ollama`` asks a
LLaVA-style model through Ollama's HTTP API.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from settings import Settings

StopCheck = Callable[[], bool]


class CaptionError(Exception):
    """Base class of captioner errors."""


class ImageUnreadable(CaptionError):
    """This one image cannot be read: the image fails, the job goes on."""


class CaptionerUnavailable(CaptionError):
    """The captioner itself cannot work (e.g. Ollama unreachable): the job fails."""


class CaptionCancelled(CaptionError):
    """The stop check fired while a caption was being made."""


class Captioner(Protocol):
    name: str

    def caption(self, path: Path, should_stop: StopCheck) -> str:
        """Describe the image at ``path``; call ``should_stop`` while working."""
        ...


def get_captioner(settings: Settings) -> Captioner:
    """The captioner named by ``CAPTIONER`` (``basic`` or ``ollama``)."""
    if settings.captioner == "basic":
        from tasks.captioners.basic import BasicCaptioner
        return BasicCaptioner()
    if settings.captioner == "ollama":
        from tasks.captioners.ollama import OllamaCaptioner
        return OllamaCaptioner(settings.ollama_url, settings.ollama_model,
                               timeout=settings.ollama_timeout)
    raise CaptionerUnavailable(
        f"unknown CAPTIONER {settings.captioner!r}: use 'basic' or 'ollama'")
