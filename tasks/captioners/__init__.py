"""Captioners: turn one image file into alt text behind one small interface.

``local`` (the default) is offline and runs small models shipped inside
installed packages (text in the image, what it shows, faces counted) plus
``basic``'s colour and light; ``basic`` uses Pillow only; ``ollama`` asks a
LLaVA-style model through Ollama's HTTP API. ``local`` and ``basic`` run in a
captioning child process per pool process (``tasks/captioners/isolation.py``)
so one image can never hold a worker past ``IMAGE_TIME_BUDGET``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from settings import Settings

StopCheck = Callable[[], bool]
NAMES = ("local", "basic", "ollama")
MAX_CAPTION_CHARS = 1500  # Mastodon's alt-text limit (PROTOCOL.md, "Reviewing captions")


class CaptionError(Exception):
    """Base class of captioner errors."""


class ImageUnreadable(CaptionError):
    """This one image cannot be read: the image fails, the job goes on."""


class CaptionerUnavailable(CaptionError):
    """The captioner itself cannot work (e.g. Ollama unreachable): the job fails."""


class CaptionCancelled(CaptionError):
    """The stop check fired while a caption was being made."""


@dataclass(frozen=True)
class Captioned:
    """A caption and what made it: the captioner's name and the stages that contributed."""

    text: str
    captioner: str
    stages: tuple[str, ...] = ()


class Captioner(Protocol):
    name: str

    def caption(self, path: Path, should_stop: StopCheck) -> Captioned:
        """Describe the image at ``path``; call ``should_stop`` while working."""
        ...


def get_captioner(settings: Settings) -> Captioner:
    """The captioner named by ``CAPTIONER``, in this process (see :func:`isolated` for workers)."""
    if settings.captioner == "local":
        from tasks.captioners.local import LocalCaptioner
        return LocalCaptioner(settings)
    if settings.captioner == "basic":
        from tasks.captioners.basic import BasicCaptioner
        return BasicCaptioner(max_pixels=settings.max_image_pixels)
    if settings.captioner == "ollama":
        from tasks.captioners.ollama import OllamaCaptioner
        return OllamaCaptioner(settings.ollama_url, settings.ollama_model,
                               timeout=settings.ollama_timeout)
    raise CaptionerUnavailable(
        f"unknown CAPTIONER {settings.captioner!r}: use 'local', 'basic' or 'ollama'")


def isolated(settings: Settings) -> Captioner:
    """What a worker uses: ``local`` and ``basic`` behind a time-bounded child process."""
    if settings.captioner in ("local", "basic"):
        from tasks.captioners.isolation import IsolatedCaptioner
        return IsolatedCaptioner(settings)
    return get_captioner(settings)
