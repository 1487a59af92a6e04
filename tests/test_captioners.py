"""The captioners: the Pillow one (basic), and the Ollama one against a local fake server.

``local`` (real models) is tested in tests/test_local_captioner.py.

No network beyond a loopback HTTP server started here; no waits over 1 s.
"""
from __future__ import annotations

import base64
import http.server
import io
import json
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from settings import load_settings
from tasks.captioners import CaptionCancelled, CaptionerUnavailable, ImageUnreadable, get_captioner
from tasks.captioners.basic import BasicCaptioner, describe
from tasks.captioners.colour import colour_name
from tasks.captioners.metadata import is_junk
from tasks.captioners.ollama import PROMPT, OllamaCaptioner
from tasks.captioners.picture import load_picture

TIMES = "\u00d7"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def never() -> bool:
    return False


# ==============================================================================
# basic
# ==============================================================================
@pytest.mark.parametrize("rgb,name", [
    ((255, 0, 0), "red"),
    ((0, 255, 0), "green"),
    ((0, 0, 255), "blue"),
    ((255, 255, 255), "white"),
    ((0, 0, 0), "black"),
    ((128, 128, 128), "grey"),
    ((64, 64, 64), "dark grey"),
    ((200, 200, 200), "light grey"),
    ((255, 255, 0), "yellow"),
    ((255, 140, 0), "orange"),
    ((0, 100, 0), "dark green"),
    ((135, 206, 250), "sky blue"),
])
def test_colour_name(rgb, name):
    assert colour_name(rgb) == name


def test_colour_name_tolerates_slight_noise():
    assert colour_name((250, 8, 5)) == "red"
    assert colour_name((3, 2, 250)) == "blue"
    assert colour_name((252, 252, 250)) == "white"
    assert colour_name((4, 4, 6)) == "black"


def caption_text(path: Path) -> str:
    return BasicCaptioner().caption(path, never).text


@pytest.mark.parametrize("size", [(200, 100), (100, 200), (100, 100), (300, 100), (100, 300)])
def test_basic_says_no_shape_word_or_pixel_size(size):
    """Issue 10: "landscape" reads as scenery and pixel sizes are noise in alt text."""
    img = Image.new("RGB", size, (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, size[0] // 2, size[1]))
    text = describe(img)
    for word in ("landscape", "portrait", "panoramic", "square", "tall", "pixels", TIMES,
                 str(size[0])):
        assert word not in text, (word, text)
    assert text.endswith(".")


def test_describe_names_the_dominant_colour():
    assert describe(Image.new("RGB", (120, 80), (255, 0, 0))) == "A plain red image."
    assert "plain green" in describe(Image.new("RGB", (120, 80), (0, 255, 0)))
    assert "plain blue" in describe(Image.new("RGB", (120, 80), (0, 0, 255)))


def test_describe_names_two_main_colours_and_a_minor_one():
    img = Image.new("RGB", (100, 100), (0, 180, 0))
    img.paste((0, 0, 255), (0, 0, 100, 40))  # 40 % blue
    img.paste((255, 255, 0), (0, 85, 100, 100))  # 15 % yellow
    text = describe(img)
    assert "mostly green and blue" in text or "mostly blue and green" in text
    assert "with some yellow" in text


def test_describe_brightness_words():
    def two_tone(a, b):
        img = Image.new("RGB", (64, 64), a)
        img.paste(b, (0, 0, 32, 64))
        return describe(img)
    dark = two_tone((20, 20, 25), (30, 10, 10))
    bright = two_tone((245, 245, 240), (250, 230, 230))
    mid = two_tone((128, 128, 128), (140, 100, 100))
    assert dark.startswith("A very dark ")
    assert bright.startswith("A very bright ")
    assert mid.startswith("A softly lit ")
    assert "dark" not in bright and "bright" not in dark


def test_describe_black_and_white_detection():
    grey = Image.linear_gradient("L").resize((128, 96))
    assert "black-and-white image" in describe(grey)
    assert "black-and-white image" in describe(grey.convert("RGB"))
    colour = Image.linear_gradient("L").resize((128, 96)).convert("RGB")
    colour.paste((255, 0, 0), (0, 0, 64, 96))
    text = describe(colour)
    assert "black-and-white" not in text and " image, " in text


def screenshot_with_red_text(path: Path) -> Path:
    img = Image.new("RGB", (1280, 720), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 40)
    draw.text((60, 60), "Meeting moved to Thursday", font=font, fill="black")
    draw.text((60, 140), "Room 4B at 3 pm", font=font, fill=(200, 0, 0))
    img.save(path)
    return path


def test_screenshot_with_red_text_is_not_black_and_white(tmp_path):
    """Issue 10: a few red words on white are colour, however few pixels they cover."""
    text = caption_text(screenshot_with_red_text(tmp_path / "shot.png"))
    assert "black-and-white" not in text, text
    assert text.startswith("A very bright image"), text


def test_describe_animated_gif_says_animated_without_counting_frames(tmp_path):
    frames = [Image.new("RGB", (60, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    made = BasicCaptioner().caption(path, never)
    assert "animated image" in made.text
    assert "frames" not in made.text
    assert made.captioner == "basic" and made.stages == ("colour",)


def test_still_gif_is_not_animated(tmp_path):
    path = tmp_path / "still.gif"
    Image.new("RGB", (60, 40), (255, 0, 0)).save(path)
    text = caption_text(path)
    assert "animated" not in text and "frames" not in text


def test_embedded_exif_description_is_quoted(tmp_path):
    exif = Image.Exif()
    exif[0x010E] = "A lighthouse at dusk"
    path = tmp_path / "exif.jpg"
    Image.new("RGB", (160, 90), (30, 60, 160)).save(path, exif=exif)
    made = BasicCaptioner().caption(path, never)
    assert 'Embedded description: "A lighthouse at dusk".' in made.text
    assert "blue" in made.text  # the pixels are still described
    assert made.stages == ("colour", "metadata")


def test_embedded_png_text_description_is_quoted(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", "Two cats on a red sofa")
    path = tmp_path / "text.png"
    Image.new("RGB", (90, 160), (200, 0, 0)).save(path, pnginfo=info)
    assert 'Embedded description: "Two cats on a red sofa".' in caption_text(path)


@pytest.mark.parametrize("junk", ["File written by Adobe Photoshop? 5.0", "OLYMPUS DIGITAL CAMERA",
                                  "SONY DSC", "Created with GIMP", "IMG_2048.JPG", "   ", "NIKON D750",
                                  "Screenshot"])
def test_software_junk_in_metadata_is_not_quoted(tmp_path, junk):
    """Issue 10: what cameras and editors write by themselves is not the author's description."""
    exif = Image.Exif()
    exif[0x010E] = junk
    path = tmp_path / "junk.jpg"
    Image.new("RGB", (160, 90), (30, 60, 160)).save(path, exif=exif)
    assert "Embedded description" not in caption_text(path)
    assert is_junk(junk)


@pytest.mark.parametrize("real", ["A lighthouse at dusk", "Apple pie on a table", "Canon ball on a lawn",
                                  "Photo of my grandmother's garden"])
def test_descriptions_that_look_like_brands_are_kept(real):
    assert not is_junk(real)


def test_xmp_description_is_read_from_a_capped_packet_only():
    """Issue 16 item 1, a bound on work without a clock: at most XMP_MAX_CHARS are looked at."""
    from tasks.captioners.metadata import XMP_MAX_CHARS, xmp_description

    def packet(pad: int) -> str:
        return ("<x:xmpmeta>" + " " * pad + '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">'
                "A heron &amp; a pike</rdf:li></rdf:Alt></dc:description>")
    assert xmp_description(packet(100)) == "A heron & a pike"
    assert xmp_description(packet(XMP_MAX_CHARS - 200)) == "A heron & a pike"
    assert xmp_description(packet(XMP_MAX_CHARS)) is None  # past the cap: never read
    assert xmp_description('<rdf:Description dc:description="Two swans"/>') == "Two swans"
    # The packet that took the old regex cubic time: 40 000 openings (960 KB), no closing.
    assert xmp_description("<dc:description><rdf:li>" * 40_000) is None


def test_xmp_description_is_quoted_from_a_real_file(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><dc:description><rdf:Alt><rdf:li xml:lang="x-default">'
                  "Fog over the harbour</rdf:li></rdf:Alt></dc:description></x:xmpmeta>")
    path = tmp_path / "xmp.png"
    Image.new("RGB", (64, 48), (120, 120, 130)).save(path, pnginfo=info)
    assert 'Embedded description: "Fog over the harbour".' in caption_text(path)


@pytest.mark.parametrize("hostile", ["SONY" + "-1" * 250 + "!", "Canon" + " d1" * 160 + "?",
                                     "IMG_1" + ".-" * 240 + "!", "file written by " + "a" * 490])
def test_junk_filter_cannot_backtrack_on_hostile_text(hostile):
    # Each of these took exponential time with an earlier version of the pattern; the
    # text is capped at MAX_TEXT and every repetition is separated by a character no
    # token contains, so they are answered at once (a regression would hang here).
    assert isinstance(is_junk(hostile), bool)


def test_no_embedded_description_means_none_quoted(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (90, 90), (0, 200, 0)).save(path)
    assert "Embedded description" not in caption_text(path)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    path = tmp_path / "rotated.jpg"
    img = Image.new("RGB", (200, 100), (0, 0, 200))
    img.paste((250, 250, 250), (0, 0, 100, 100))
    img.save(path, exif=exif)
    picture = load_picture(path)
    assert picture.rgb.size == (100, 200)  # as shown
    assert (picture.width, picture.height) == (200, 100)  # as stored


def _noise_jpeg(size=(256, 256), seed=1) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_truncated_jpeg_is_unreadable(tmp_path):
    data = _noise_jpeg()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageUnreadable, match="cannot read image"):
        BasicCaptioner().caption(path, never)


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_non_images_are_unreadable(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageUnreadable):
        BasicCaptioner().caption(path, never)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageUnreadable):
        BasicCaptioner().caption(tmp_path / "nope.png", never)


def test_basic_caption_is_deterministic(tmp_path):
    data = _noise_jpeg(seed=7)
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(data)
    b.write_bytes(data)
    cap = BasicCaptioner()
    first = cap.caption(a, never)
    assert first == cap.caption(a, never) == BasicCaptioner().caption(b, never)
    assert first.text.startswith(("A ", "An "))


def test_basic_captioner_name():
    assert BasicCaptioner.name == "basic"


# ==============================================================================
# ollama: a local fake of /api/generate
# ==============================================================================
def chunk(text: str, done: bool = False, **extra) -> dict:
    out = {"model": "llava", "created_at": "2024-05-01T12:00:00.000000Z", "response": text,
           "done": done}
    if done:
        out.update({"done_reason": "stop", "total_duration": 123456, "eval_count": 7})
    out.update(extra)
    return out


class FakeOllama(http.server.ThreadingHTTPServer):
    """Answers POST /api/generate as the test script says; records each request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.status = 200
        self.lines: list[bytes] = []
        self.error_body: bytes = b""
        self.stall_before_headers = False
        self.stall_after_lines = False
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, chunks: list[dict]) -> None:
        self.lines = [json.dumps(c).encode() + b"\n" for c in chunks]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeOllama

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        self.server.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "body": json.loads(raw)})
        srv = self.server
        if srv.stall_before_headers:
            srv.release.wait(5)
            return
        try:
            if srv.status != 200:
                self.send_response(srv.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(srv.error_body)))
                self.end_headers()
                self.wfile.write(srv.error_body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            for line in srv.lines:
                self.wfile.write(line)
                self.wfile.flush()
            if srv.stall_after_lines:
                srv.release.wait(5)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (a cancel): fine


@pytest.fixture()
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(2)


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (32, 24), (10, 120, 200)).save(path)
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ollama_joins_streamed_text(ollama, image):
    ollama.script([chunk("A "), chunk("blue "), chunk(""), chunk("square."), chunk("", done=True)])
    calls = []

    def stop() -> bool:
        calls.append(1)
        return False

    made = OllamaCaptioner(ollama.url, "llava", timeout=5).caption(image, stop)
    assert made.text == "A blue square." and made.captioner == "ollama"
    assert len(calls) == 5  # checked on every chunk

    [req] = ollama.requests
    assert req["path"] == "/api/generate"
    assert req["headers"]["Content-Type"].startswith("application/json")
    body = req["body"]
    assert body["model"] == "llava"
    assert body["prompt"] == PROMPT and body["prompt"].strip()
    assert body["stream"] is True
    assert base64.b64decode(body["images"][0], validate=True) == image.read_bytes()
    assert len(body["images"]) == 1


def test_ollama_strips_surrounding_whitespace_and_stops_at_done(ollama, image):
    ollama.script([chunk("  A dog"), chunk(" running.\n", done=True), chunk("ignored")])
    assert OllamaCaptioner(ollama.url + "/", "llava").caption(image, never).text == "A dog running."


def test_ollama_uses_the_configured_model(ollama, image):
    ollama.script([chunk("Fine.", done=True)])
    OllamaCaptioner(ollama.url, "llava:13b").caption(image, never)
    assert ollama.requests[0]["body"]["model"] == "llava:13b"


def test_ollama_stop_mid_stream_raises_cancelled(ollama, image):
    ollama.script([chunk("A "), chunk("very "), chunk("long "), chunk("caption"),
                   chunk("", done=True)])
    calls = []

    def stop_on_second() -> bool:
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(CaptionCancelled):
        OllamaCaptioner(ollama.url, "llava", timeout=5).caption(image, stop_on_second)
    assert len(calls) == 2  # it stopped at once, without reading the rest


def test_ollama_unknown_model_is_unavailable(ollama, image):
    ollama.status = 404
    ollama.error_body = json.dumps({"error": "model 'x' not found"}).encode()
    with pytest.raises(CaptionerUnavailable) as info:
        OllamaCaptioner(ollama.url, "x").caption(image, never)
    message = str(info.value)
    assert "'x'" in message
    assert "model 'x' not found" in message
    assert "ollama pull x" in message


def test_ollama_error_chunk_makes_the_image_unreadable(ollama, image):
    ollama.script([chunk("A "), {"error": "failed to process image: unknown format"}])
    with pytest.raises(ImageUnreadable, match="unknown format"):
        OllamaCaptioner(ollama.url, "llava").caption(image, never)


def test_ollama_bad_request_makes_the_image_unreadable(ollama, image):
    ollama.status = 400
    ollama.error_body = json.dumps({"error": "invalid image input"}).encode()
    with pytest.raises(ImageUnreadable, match="invalid image input"):
        OllamaCaptioner(ollama.url, "llava").caption(image, never)


def test_ollama_server_error_is_unavailable(ollama, image):
    ollama.status = 500
    ollama.error_body = b"upstream exploded"
    with pytest.raises(CaptionerUnavailable, match="500.*upstream exploded"):
        OllamaCaptioner(ollama.url, "llava").caption(image, never)


def test_ollama_non_json_line_is_unavailable(ollama, image):
    ollama.lines = [b"<html>proxy error</html>\n"]
    with pytest.raises(CaptionerUnavailable, match="not JSON"):
        OllamaCaptioner(ollama.url, "llava").caption(image, never)


def test_ollama_empty_caption_is_unreadable(ollama, image):
    ollama.script([chunk(""), chunk("  ", done=True)])
    with pytest.raises(ImageUnreadable, match="empty"):
        OllamaCaptioner(ollama.url, "llava").caption(image, never)


def test_ollama_unreachable_server_is_unavailable(image):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(CaptionerUnavailable) as info:
        OllamaCaptioner(url, "llava", timeout=0.5).caption(image, never)
    message = str(info.value)
    assert url in message
    assert "not reachable" in message


def test_ollama_stalling_before_answering_is_unavailable(ollama, image):
    ollama.stall_before_headers = True
    with pytest.raises(CaptionerUnavailable) as info:
        OllamaCaptioner(ollama.url, "llava", timeout=0.5).caption(image, never)
    assert ollama.url in str(info.value)
    assert "in time" in str(info.value)


def test_ollama_stalling_mid_stream_is_unavailable(ollama, image):
    ollama.script([chunk("A "), chunk("half ")])
    ollama.stall_after_lines = True
    with pytest.raises(CaptionerUnavailable) as info:
        OllamaCaptioner(ollama.url, "llava", timeout=0.5).caption(image, never)
    assert ollama.url in str(info.value)


def test_ollama_missing_file_is_unreadable_without_a_request(ollama, tmp_path):
    with pytest.raises(ImageUnreadable):
        OllamaCaptioner(ollama.url, "llava").caption(tmp_path / "gone.png", never)
    assert ollama.requests == []


# ==============================================================================
# get_captioner
# ==============================================================================
def test_get_captioner_default_is_local():
    from tasks.captioners.local import LocalCaptioner

    cap = get_captioner(load_settings(env={}))
    assert isinstance(cap, LocalCaptioner)
    assert cap.name == "local"
    basic = get_captioner(load_settings(env={"CAPTIONER": "basic"}))
    assert isinstance(basic, BasicCaptioner)


def test_get_captioner_ollama_uses_settings():
    settings = load_settings(env={}).with_overrides(
        captioner="ollama", ollama_url="http://ollama.internal:11434/", ollama_model="bakllava",
        ollama_timeout=7.5)
    cap = get_captioner(settings)
    assert isinstance(cap, OllamaCaptioner)
    assert cap.name == "ollama"
    assert cap.url == "http://ollama.internal:11434"
    assert cap.model == "bakllava"
    assert cap.timeout == 7.5


def test_get_captioner_from_environment():
    settings = load_settings(env={"CAPTIONER": " Ollama ", "OLLAMA_MODEL": "llava:7b"})
    cap = get_captioner(settings)
    assert isinstance(cap, OllamaCaptioner) and cap.model == "llava:7b"


@pytest.mark.parametrize("name", ["gpt", "", "BASIC-2"])
def test_get_captioner_unknown_name_is_unavailable(name):
    settings = load_settings(env={}).with_overrides(captioner=name)
    with pytest.raises(CaptionerUnavailable) as info:
        get_captioner(settings)
    assert repr(name) in str(info.value)
    assert "basic" in str(info.value) and "ollama" in str(info.value) and "local" in str(info.value)


def test_get_captioner_ollama_end_to_end(ollama, image):
    ollama.script([chunk("A small "), chunk("blue rectangle.", done=True)])
    settings = load_settings(env={}).with_overrides(captioner="ollama", ollama_url=ollama.url,
                                                   ollama_model="llava", ollama_timeout=2.0)
    assert get_captioner(settings).caption(image, never).text == "A small blue rectangle."


def test_purple_is_not_called_pink():
    assert colour_name((128, 0, 128)) == "dark purple"
    assert colour_name((160, 60, 200)) == "purple"
    assert colour_name((255, 105, 180)) in {"pink", "light pink"}
