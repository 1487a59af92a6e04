"""Stage "objects": what the picture shows, from an ImageNet classifier (EfficientNet-Lite0).

Probabilities of one group ("a dog", "a drink") are summed. The best group
is stated when it reaches :data:`CONFIDENT`, hedged ("may show") from
:data:`HEDGED`, and left out below; within a group, a class holding most of
the chance is named itself ("an espresso"), otherwise the group is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tasks.captioners import efficientnet
from tasks.captioners.labels import Label, labels
from tasks.captioners.sessions import make_session

CONFIDENT = 0.5
HEDGED = 0.2
OWN_NAME = 0.5  # a class with this much of the chance is named rather than its group


@dataclass(frozen=True)
class Seen:
    name: str          # "a cat"
    group: str         # "a cat"; "text" for web pages, menus, crosswords and book covers
    probability: float

    @property
    def confident(self) -> bool:
        return self.probability >= CONFIDENT


class ObjectClassifier:
    """Builds the classifier once (about 0.2 s); :meth:`classify` is one picture."""

    name = "objects"

    def __init__(self) -> None:
        weights = efficientnet.read_checkpoint(efficientnet.checkpoint_path())
        self.session = make_session(efficientnet.build_model(weights))
        self.labels = labels()

    def probabilities(self, rgb: Image.Image) -> np.ndarray:
        x = preprocess(rgb)
        logits = self.session.run(["logits"], {"image": x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def classify(self, rgb: Image.Image) -> Seen | None:
        """The best group if it reaches :data:`HEDGED`, else None."""
        return best(self.probabilities(rgb), self.labels)


def preprocess(rgb: Image.Image) -> np.ndarray:
    """Shorter side to 256, centre crop of 224, scaled as the Lite models were trained."""
    size = efficientnet.INPUT_SIZE
    scale = 256 / min(rgb.size)
    img = rgb.resize((max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))),
                     Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = (np.asarray(img, dtype=np.float32) - efficientnet.MEAN) / efficientnet.STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def best(p: np.ndarray, table: tuple[Label, ...]) -> Seen | None:
    groups: dict[str, float] = {}
    top: dict[str, tuple[float, str]] = {}
    for i in np.argsort(-p)[:50]:  # the tail holds nothing that could reach HEDGED
        label, prob = table[int(i)], float(p[int(i)])
        if not label.group:
            continue
        groups[label.group] = groups.get(label.group, 0.0) + prob
        if prob > top.get(label.group, (0.0, ""))[0]:
            top[label.group] = (prob, label.name)
    if not groups:
        return None
    group, prob = max(groups.items(), key=lambda kv: kv[1])
    if prob < HEDGED:
        return None
    own_prob, own_name = top[group]
    name = own_name if own_prob >= OWN_NAME * prob and own_prob >= HEDGED else group
    if group == "text":
        name = group
    return Seen(name=name, group=group, probability=prob)
