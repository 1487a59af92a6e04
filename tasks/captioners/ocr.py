"""Stage "ocr": the text in the image, line by line in reading order (RapidOCR, PP-OCR models).

RapidOCR 3.x ships its PP-OCR detection, direction and recognition ONNX
models inside its wheel (Apache-2.0), so nothing is fetched at run time.
Lines whose recognition score is below :data:`MIN_SCORE` are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tasks.captioners.sessions import THREADS

MIN_SCORE = 0.75
MIN_SIDE = 32  # smaller pictures hold no readable text
MIN_CHARS = 2  # a lone character is more often a texture than text


@dataclass(frozen=True)
class TextFound:
    lines: list[str]      # reading order: top to bottom, left to right within a line
    area_share: float     # share of the picture covered by text boxes (0..1)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class TextReader:
    """Loads the OCR models once; :meth:`read` is one picture's text."""

    name = "ocr"

    def __init__(self) -> None:
        from rapidocr import RapidOCR

        ort = {f"EngineConfig.onnxruntime.{k}": THREADS
               for k in ("intra_op_num_threads", "inter_op_num_threads")}
        self.engine = RapidOCR(params={"Global.log_level": "critical", **ort})

    def read(self, rgb: Image.Image) -> TextFound:
        if min(rgb.size) < MIN_SIDE:
            return TextFound([], 0.0)
        result = self.engine(np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1]))  # RapidOCR reads OpenCV's BGR order
        boxes, texts, scores = result.boxes, result.txts, result.scores
        if boxes is None or texts is None:
            return TextFound([], 0.0)
        kept = [(np.asarray(box, dtype=float), " ".join(str(text).split()))
                for box, text, score in zip(boxes, texts, scores)
                if score is not None and float(score) >= MIN_SCORE and len(str(text).strip()) >= MIN_CHARS]
        area = sum(_area(box) for box, _ in kept) / float(rgb.width * rgb.height)
        return TextFound(reading_order(kept), min(1.0, area))


def _area(box: np.ndarray) -> float:
    x, y = box[:, 0], box[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def reading_order(pieces: list[tuple[np.ndarray, str]]) -> list[str]:
    """Join text boxes into lines (vertical centres within one another's span), top to bottom."""
    spans = sorted(((float(b[:, 1].min()), float(b[:, 1].max()), float(b[:, 0].min()), t)
                    for b, t in pieces), key=lambda s: (s[0] + s[1]) / 2)
    lines: list[list[tuple[float, float, float, str]]] = []
    for span in spans:
        centre = (span[0] + span[1]) / 2
        if lines and lines[-1][0][0] <= centre <= lines[-1][0][1]:
            lines[-1].append(span)
        else:
            lines.append([span])
    return [" ".join(t for *_, t in sorted(line, key=lambda s: s[2])) for line in lines]
