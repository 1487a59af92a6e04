"""The offline ``local`` captioner: text in the image, what it shows, faces counted, colour and light.

Stages run in the order of ``CAPTION_STAGES`` (default ``ocr, objects,
faces, metadata, colour``), the stop check between them. Each model loads
once per process, on first use. A stage degrades and never breaks the
caption: when its package is missing, its model fails to load, it raises,
or it runs past ``STAGE_TIME_BUDGET``, its sentence is left out and the
reason is logged once per process. When no model stage can load at all the
captions are ``basic``'s (and say so in ``Captioned.captioner``).

A stage runs in a thread of its own so that its budget holds even inside
C code; a stage that overran leaves the captioner *tainted* (its thread
may still be running), and the captioning child exits after answering so
the next image starts clean (``tasks/captioners/isolation.py``).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from settings import Settings
from tasks.captioners import CaptionCancelled, Captioned, StopCheck
from tasks.captioners.basic import describe_picture
from tasks.captioners.colour import plain_colour
from tasks.captioners.compose import Findings, colour_sentence, compose, mostly_text, text_kind
from tasks.captioners.picture import Picture, load_picture

log = logging.getLogger(__name__)
MODEL_STAGES = ("ocr", "objects", "faces")
ALL_STAGES = (*MODEL_STAGES, "metadata", "colour")
_POLL = 0.05  # s between stop checks while a stage runs


class StageFailed(Exception):
    """A stage raised, could not load, or ran past its budget: its sentence is left out."""


def _load(stage: str) -> Any:
    if stage == "ocr":
        from tasks.captioners.ocr import TextReader
        return TextReader()
    if stage == "objects":
        from tasks.captioners.objects import ObjectClassifier
        return ObjectClassifier()
    from tasks.captioners.faces import FaceCounter
    return FaceCounter()


class LocalCaptioner:
    name = "local"

    def __init__(self, settings: Settings, loader: Callable[[str], Any] = _load) -> None:
        unknown = [s for s in settings.caption_stages if s not in ALL_STAGES]
        if unknown:
            log.warning("CAPTION_STAGES: unknown stage(s) %s ignored (known: %s)",
                        ", ".join(unknown), ", ".join(ALL_STAGES))
        self.stages = tuple(s for s in settings.caption_stages if s in ALL_STAGES)
        self.max_pixels = settings.max_image_pixels
        self.stage_budget = settings.stage_time_budget
        self.loader = loader
        self.models: dict[str, Any] = {}
        self.load_seconds: dict[str, float] = {}
        self.tainted = False
        self._logged: set[tuple[str, str]] = set()

    # -- models ------------------------------------------------------------------------------
    def model(self, stage: str) -> Any:
        """The stage's model, loaded on first use; None (logged once) when it cannot load."""
        if stage not in self.models:
            started = time.monotonic()
            try:
                self.models[stage] = self.loader(stage)
            except Exception as exc:  # noqa: BLE001 - ImportError, a missing file, a bad model: degrade
                self._log_once(stage, "load", f"stage {stage} cannot load and is skipped: "
                                              f"{type(exc).__name__}: {exc}")
                self.models[stage] = None
            self.load_seconds[stage] = round(time.monotonic() - started, 3)
        return self.models[stage]

    def load(self) -> list[str]:
        """Load every configured model now; the model stages that can run."""
        return [s for s in self.stages if s in MODEL_STAGES and self.model(s) is not None]

    def usable(self) -> bool:
        return not any(s in MODEL_STAGES for s in self.stages) or bool(self.load())

    # -- one image ---------------------------------------------------------------------------
    def caption(self, path: Path, should_stop: StopCheck) -> Captioned:
        picture = load_picture(path, self.max_pixels)
        if not self.usable():
            return describe_picture(picture)  # nothing of local can run: basic's caption
        return self.caption_picture(picture, should_stop)

    def caption_picture(self, picture: Picture, should_stop: StopCheck) -> Captioned:
        found = Findings()
        rgb = picture.rgb
        plain = plain_colour(rgb)  # one flat colour: nothing to read, recognise or count
        ran: list[str] = []
        for stage in self.stages:
            if should_stop():
                raise CaptionCancelled("cancelled between stages")
            if plain is not None and stage in MODEL_STAGES:
                continue
            try:
                self._run(stage, picture, found, should_stop)
                ran.append(stage)
            except StageFailed as exc:
                self._log_once(stage, type(exc.__cause__ or exc).__name__, str(exc))
        if plain is not None and "colour" in ran:
            found.colour = f"A plain {plain} image."
        if mostly_text(found):
            found.kind = text_kind(rgb)
        return Captioned(compose(found), self.name, contributed(found, ran))

    def _run(self, stage: str, picture: Picture, found: Findings, should_stop: StopCheck) -> None:
        rgb = picture.rgb
        if stage == "metadata":
            found.description = picture.description
        elif stage == "colour":
            found.colour = colour_sentence(rgb)
        else:
            model = self.model(stage)
            if model is None:
                raise StageFailed(f"stage {stage} is not available")
            if stage == "ocr":
                text = self._bounded(stage, lambda: model.read(rgb), should_stop)
                found.text_lines, found.text_share = text.lines, text.area_share
            elif stage == "objects":
                seen = self._bounded(stage, lambda: model.classify(rgb), should_stop)
                if seen is not None:
                    found.seen_name, found.seen_group = seen.name, seen.group
                    found.seen_confident = seen.confident
            else:
                found.faces = self._bounded(stage, lambda: model.count(rgb), should_stop)

    def _bounded(self, stage: str, work: Callable[[], Any], should_stop: StopCheck) -> Any:
        """``work()`` in a thread, waited for at most the stage budget, the stop check polled."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = exc
            finally:
                done.set()
        threading.Thread(target=run, name=f"stage-{stage}", daemon=True).start()
        deadline = time.monotonic() + self.stage_budget
        while not done.wait(max(0.0, min(_POLL, deadline - time.monotonic()))):
            if should_stop():
                self.tainted = True
                raise CaptionCancelled(f"cancelled during stage {stage}")
            if time.monotonic() >= deadline:
                self.tainted = True
                raise StageFailed(f"stage {stage} ran past its {self.stage_budget:g} s budget "
                                  f"and was left out")
        if "error" in box:
            exc = box["error"]
            raise StageFailed(f"stage {stage} failed and was left out: {type(exc).__name__}: {exc}") from exc
        return box["value"]

    def _log_once(self, stage: str, reason: str, message: str) -> None:
        if (stage, reason) not in self._logged:
            self._logged.add((stage, reason))
            log.warning("%s", message)


def contributed(found: Findings, ran: list[str]) -> tuple[str, ...]:
    """The stages whose findings are in the caption, in stage order."""
    made = {
        "ocr": bool(found.text_lines),
        "objects": bool(found.seen_name) and (not found.kind or found.seen_group == "text"),
        "faces": found.faces > 0,
        "metadata": bool(found.description),
        "colour": bool(found.colour),
    }
    return tuple(s for s in ran if made.get(s))
