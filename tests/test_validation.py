"""The catalogue of bad inputs at the record and image level.

Each bad input raises RecordError naming the pid and the field; each odd-but-valid image mode
becomes an RGB PNG, with transparency composited on white.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from svrd.errors import RecordError
from svrd.images import normalize_image
from svrd.records import MAX_CHOICES, MIN_CHOICES, validate_record

PID = "4242"


def record(**changes) -> dict:
    rec = {
        "pid": PID, "split": "train", "image": None, "question": "Which animal is a mammal?",
        "choices": ["frog", "dog", "trout"], "answer": 1, "hint": "", "task": "closed choice",
        "grade": "grade3", "subject": "natural science", "topic": "biology", "category": "Classify",
        "skill": "Identify mammals", "lecture": "Mammals have fur.", "solution": "A dog is a mammal.",
        "caption": "",
    }
    rec.update(changes)
    return rec


def png(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    out = normalize_image(data, PID)
    assert out[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(out))
    img.load()
    assert img.mode == "RGB"
    return img


def assert_names(exc: RecordError, field: str, pid: str | None = PID) -> None:
    assert exc.pid == pid and exc.field == field
    assert f"pid {pid}" in str(exc) and f"'{field}'" in str(exc)


# --- images: refused ------------------------------------------------------------------------

VALID_PNG = png(Image.new("RGB", (32, 32), (10, 200, 30)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not an image at all" * 4, "cannot be decoded"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10, "cannot be decoded"),
        (VALID_PNG[: len(VALID_PNG) // 2], "cannot be decoded"),  # truncated
        (b"", "empty"),
    ],
    ids=["corrupt", "corrupt-after-png-signature", "truncated", "zero-bytes"],
)
def test_broken_image_bytes(data, reason):
    with pytest.raises(RecordError, match=reason) as info:
        normalize_image(data, PID)
    assert_names(info.value, "image")


def test_truncated_noisy_png():
    # noise does not compress, so half the file really lacks half the pixel data
    rng = np.random.default_rng(0)
    data = png(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(RecordError) as info:
        normalize_image(data[: len(data) // 2], PID)
    assert_names(info.value, "image")


def test_decompression_bomb_refused_by_explicit_limit():
    bomb = png(Image.new("1", (10_000, 10_000)))  # 100M pixels in about 12 KB
    assert len(bomb) < 50_000
    with pytest.raises(RecordError, match="exceeds the limit") as info:
        normalize_image(bomb, PID, max_pixels=25_000_000)
    assert_names(info.value, "image")
    assert "10000x10000" in str(info.value)


def test_pixel_limit_is_the_callers():
    data = png(Image.new("RGB", (100, 100)))
    with pytest.raises(RecordError, match="exceeds the limit of 9999"):
        normalize_image(data, PID, max_pixels=9_999)
    assert decoded(data).size == (100, 100)


# --- images: converted to RGB ---------------------------------------------------------------


def test_palette():
    img = Image.new("P", (8, 8))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    out = decoded(png(img))
    assert out.getpixel((0, 0)) == (0, 0, 255) and out.getpixel((1, 1)) == (255, 0, 0)


def test_palette_with_transparency_becomes_white():
    img = Image.new("P", (8, 8))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black (transparent), 1 red
    img.putpixel((0, 0), 1)
    out = decoded(png(img, transparency=0))
    assert out.getpixel((3, 3)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(("mode", "clear", "solid"), [("RGBA", (0, 0, 0, 0), (0, 0, 255, 255)), ("LA", (0, 0), (0, 255))])
def test_alpha_becomes_white(mode, clear, solid):
    img = Image.new(mode, (8, 8), clear)
    img.putpixel((0, 0), solid)
    out = decoded(png(img))
    assert out.getpixel((4, 4)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == ((0, 0, 255) if mode == "RGBA" else (0, 0, 0))


def test_half_transparent_is_blended_on_white():
    out = decoded(png(Image.new("RGBA", (4, 4), (0, 0, 0, 128))))
    assert all(120 <= c <= 135 for c in out.getpixel((0, 0)))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_trns_colour_key_becomes_white(mode):
    black = 0 if mode == "L" else (0, 0, 0)
    img = Image.new(mode, (4, 4), black)
    img.putpixel((0, 0), 200 if mode == "L" else (200, 200, 200))
    out = decoded(png(img, transparency=black))
    assert out.getpixel((2, 2)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (200, 200, 200)


def test_cmyk_jpeg():
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(buf, format="JPEG", quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "CMYK"
    out = decoded(buf.getvalue())
    assert all(c >= 250 for c in out.getpixel((8, 8)))  # no ink is white


def test_16bit_grayscale_keeps_its_brightness():
    arr = np.zeros((4, 4), dtype=np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 65535, 32896, 1000  # white, mid grey, near black
    img = Image.fromarray(arr)
    data = png(img)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decoded(data)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (128, 128, 128)  # getpixel takes (x, y)
    assert out.getpixel((2, 0)) == (4, 4, 4)  # not stretched to white by the image's own maximum
    assert out.getpixel((3, 3)) == (0, 0, 0)


def test_grayscale():
    out = decoded(png(Image.new("L", (4, 4), 77)))
    assert out.getpixel((1, 1)) == (77, 77, 77)


def test_rgb_png_round_trips_unchanged():
    out = decoded(VALID_PNG)
    assert out.getpixel((5, 5)) == (10, 200, 30)


# --- records --------------------------------------------------------------------------------


def test_valid_record_is_normalized():
    out = validate_record(record(pid=4242, hint=None, question=b"Which animal is a mammal?"))
    assert out["pid"] == "4242" and out["hint"] == "" and out["question"] == "Which animal is a mammal?"
    assert out["answer"] == 1 and out["choices"] == ["frog", "dog", "trout"]
    assert validate_record(record(answer=np.int64(2)))["answer"] == 2
    assert validate_record(record(choices=np.array(["a", "b"]), answer=0))["choices"] == ["a", "b"]


BAD_RECORDS = {
    "answer-out-of-range": (dict(answer=3), "answer", "out of range"),
    "answer-negative": (dict(answer=-1), "answer", "out of range"),
    "answer-float": (dict(answer=1.0), "answer", "expected an option index"),
    "answer-string": (dict(answer="1"), "answer", "expected an option index"),
    "answer-bool": (dict(answer=True), "answer", "expected an option index"),
    "answer-missing": (dict(answer=None), "answer", "expected an option index"),
    "one-choice": (dict(choices=["yes"], answer=0), "choices", "has 1 options"),
    "no-choices": (dict(choices=[], answer=0), "choices", "has 0 options"),
    "six-choices": (dict(choices=list("abcdef"), answer=0), "choices", "has 6 options"),
    "choices-a-string": (dict(choices="frog, dog"), "choices", "expected a list"),
    "choices-missing": (dict(choices=None), "choices", "expected a list"),
    "duplicate-options": (dict(choices=["dog", "cat", "dog "]), "choices", "options repeat"),
    "empty-option": (dict(choices=["dog", "  "], answer=0), "choices", "an option is empty"),
    "non-text-option": (dict(choices=["dog", 3], answer=0), "choices", "expected text"),
    "empty-question": (dict(question="   "), "question", "is empty"),
    "missing-question": (dict(question=None), "question", "is empty"),
    "missing-topic": (dict(topic=""), "topic", "is empty"),
    "non-utf8-question": (dict(question=b"Which \xff\xfe animal?"), "question", "not valid UTF-8"),
    "non-utf8-option": (dict(choices=[b"d\xc3og", b"cat"]), "choices", "not valid UTF-8"),
    "fffd-in-text": (dict(lecture="Mammals \ufffd fur."), "lecture", r"U\+FFFD"),
    "fffd-as-utf8-bytes": (dict(solution="A dog \ufffd.".encode()), "solution", r"U\+FFFD"),
    "non-text-hint": (dict(hint=12), "hint", "expected text"),
}


@pytest.mark.parametrize(("changes", "field", "reason"), BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_bad_records(changes, field, reason):
    with pytest.raises(RecordError, match=reason) as info:
        validate_record(record(**changes))
    assert_names(info.value, field)


@pytest.mark.parametrize("pid", [None, "", "   "])
def test_missing_pid(pid):
    with pytest.raises(RecordError, match="missing pid") as info:
        validate_record(record(pid=pid))
    assert_names(info.value, "pid", pid=None)


def test_reject_row():
    with pytest.raises(RecordError) as info:
        validate_record(record(answer=7))
    assert info.value.as_reject() == {"pid": PID, "field": "answer", "reason": info.value.reason}


# --- property: validate_record returns a consistent record or raises RecordError -------------

texts = st.one_of(st.none(), st.text(max_size=12), st.binary(max_size=12), st.integers(), st.sampled_from(["\ufffd"]))
choice_lists = st.one_of(
    st.lists(st.one_of(st.text(max_size=8), st.binary(max_size=8), st.none(), st.integers()), max_size=7),
    st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=5, unique=True),  # mostly valid
    st.none(), st.text(max_size=8), st.integers(),
)
answers = st.one_of(st.integers(-3, 8), st.none(), st.floats(), st.text(max_size=3), st.booleans(), st.integers())


@settings(max_examples=400, deadline=None)
@given(
    pid=st.one_of(st.none(), st.text(max_size=6), st.integers()),
    choices=choice_lists,
    answer=answers,
    question=texts,
    others=st.dictionaries(st.sampled_from(["hint", "subject", "topic", "grade", "lecture", "split"]), texts),
)
def test_validate_record_property(pid, choices, answer, question, others):
    rec = record(pid=pid, choices=choices, answer=answer, question=question, **others)
    try:
        out = validate_record(rec)
    except RecordError as exc:
        assert exc.field and exc.reason
        return
    assert MIN_CHOICES <= len(out["choices"]) <= MAX_CHOICES
    assert isinstance(out["answer"], int) and 0 <= out["answer"] < len(out["choices"])
    assert all(isinstance(c, str) and c.strip() for c in out["choices"])
    assert isinstance(out["pid"], str) and out["pid"].strip()
    assert out["question"].strip()


def _claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is rewritten to claim width x height (CRC fixed up)."""
    import struct
    import zlib

    data = bytearray(png(Image.new("L", (4, 4))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("max_pixels", [25_000_000, 10**12])  # ours refuses first, or Pillow's own
def test_header_claiming_20000x20000(max_pixels):
    with pytest.raises(RecordError, match="exceeds the limit|decompression bomb") as info:
        normalize_image(_claiming(20_000, 20_000), PID, max_pixels=max_pixels)
    assert_names(info.value, "image")
