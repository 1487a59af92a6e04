"""Stage "faces": how many faces are visible (MTCNN, vendored under MIT in ``vendor/mtcnn``).

Only a count is ever said. Nothing about age, gender, identity or emotion
is computed, and faces smaller than :data:`MIN_FACE_SHARE` of the shorter
side (a crowd far away) are not counted.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from tasks.captioners.sessions import make_session

MAX_SIDE = 1024        # faces are looked for on a copy at most this large
MIN_FACE_SHARE = 0.04  # of the shorter side
MIN_FACE_PX = 20
MIN_SCORE = 0.9


class FaceCounter:
    name = "faces"

    def __init__(self) -> None:
        from tasks.captioners.vendor.mtcnn.detector import MTCNN

        self.detector = MTCNN(make_session)

    def count(self, rgb: Image.Image) -> int:
        img = rgb.copy()
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR)
        if min(img.size) < MIN_FACE_PX:
            return 0
        min_face = max(MIN_FACE_PX, int(min(img.size) * MIN_FACE_SHARE))
        boxes = self.detector.detect(np.asarray(img), min_face_size=min_face)
        return int(np.sum(boxes[:, 4] >= MIN_SCORE)) if len(boxes) else 0
