"""Friendly names for the 1 000 ImageNet classes, and the groups whose chances add up.

``models/imagenet_labels.txt`` holds the WordNet lemmas of the ImageNet-1k
classes in index order (from timm's ``imagenet_synset_to_lemma.txt``,
Apache-2.0; the lemmas are WordNet's). A class's friendly name is its first
lemma with an article ("an espresso"); classes of one kind form a group
("a dog" for the 118 breeds, "a cat" for the five house cats), whose
probabilities are summed so that "it is some dog" can be said with
confidence when no breed is. Classes that name a person's gender or are
underwear are never stated (:data:`NEVER_SAID`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

LABELS_FILE = Path(__file__).with_name("models") / "imagenet_labels.txt"

# (first index, last index inclusive, group name)
GROUPS: tuple[tuple[int, int, str], ...] = (
    (0, 6, "a fish"), (389, 397, "a fish"), (7, 24, "a bird"), (80, 100, "a bird"),
    (127, 146, "a bird"), (25, 29, "a salamander"), (30, 32, "a frog"), (33, 37, "a turtle"),
    (38, 48, "a lizard"), (49, 50, "a crocodile"), (52, 68, "a snake"), (72, 77, "a spider"),
    (118, 121, "a crab"), (125, 125, "a crab"), (122, 124, "a lobster"), (147, 148, "a whale"),
    (151, 268, "a dog"), (269, 271, "a wolf"), (277, 280, "a fox"), (281, 285, "a cat"),
    (294, 297, "a bear"), (300, 307, "a beetle"), (321, 326, "a butterfly"),
    (330, 332, "a rabbit"), (341, 343, "a pig"), (351, 353, "an antelope"),
    (369, 382, "a monkey"), (383, 384, "a lemur"), (385, 386, "an elephant"), (101, 101, "an elephant"),
    (916, 916, "text"), (917, 918, "text"), (921, 922, "text"),
)
# Single classes that join a group.
MEMBERS: dict[int, str] = {
    967: "a drink", 968: "a drink", 504: "a drink", 966: "a drink", 969: "a drink", 441: "a drink",
    436: "a car", 468: "a car", 511: "a car", 609: "a car", 627: "a car", 656: "a car", 661: "a car",
    717: "a car", 751: "a car", 817: "a car", 581: "a car", 479: "a car",
    472: "a boat", 484: "a boat", 510: "a boat", 554: "a boat", 576: "a boat", 625: "a boat",
    628: "a boat", 724: "a boat", 780: "a boat", 814: "a boat", 871: "a boat", 914: "a boat",
    404: "an aeroplane", 895: "an aeroplane", 908: "an aeroplane",
    664: "a computer screen", 782: "a computer screen", 851: "a television",
    527: "a computer", 620: "a laptop", 681: "a laptop",
}
# Friendly names where the first lemma reads oddly.
NAMES: dict[int, str] = {
    339: "a horse", 345: "an ox", 348: "a sheep", 335: "a squirrel", 387: "a red panda", 388: "a panda",
    365: "an orangutan", 419: "a plaster", 948: "an apple", 998: "an ear of corn", 989: "a rose hip",
    916: "a web page", 681: "a laptop", 664: "a computer monitor", 673: "a computer mouse",
    737: "a bottle", 876: "a bathtub", 925: "a soup", 665: "a moped", 670: "a motor scooter",
    968: "a cup", 504: "a coffee mug", 967: "an espresso", 966: "a glass of red wine",
    441: "a glass of beer", 987: "corn", 999: "toilet paper", 984: "a field of rapeseed",
    970: "mountains", 975: "a lakeside", 978: "a seashore", 979: "a valley", 977: "a sandbar",
}
NEVER_SAID = frozenset({982, 459, 445, 638, 639})  # groom; brassiere, bikini, maillots


@dataclass(frozen=True)
class Label:
    name: str    # "an espresso"
    group: str   # "a drink" (its own name when it belongs to no group)


def article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


@functools.lru_cache(maxsize=1)
def labels() -> tuple[Label, ...]:
    """The 1 000 labels in class order."""
    lemmas = LABELS_FILE.read_text(encoding="utf-8").splitlines()
    if len(lemmas) != 1000:
        raise ValueError(f"{LABELS_FILE} must list 1000 classes, it lists {len(lemmas)}")
    ranged = {i: name for first, last, name in GROUPS for i in range(first, last + 1)}
    out = []
    for i, lemma in enumerate(lemmas):
        if i in NEVER_SAID:
            out.append(Label("", ""))
            continue
        # A class of a ranged group is named by its group ("a dog", never a guessed breed).
        name = NAMES.get(i) or ranged.get(i) or article(lemma.split(",")[0].strip())
        out.append(Label(name, ranged.get(i) or MEMBERS.get(i) or name))
    return tuple(out)
