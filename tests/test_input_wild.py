"""Inputs from the wild (issue #19): URLs, images, bodies, captions and configs that users
actually have, each with the value the manifest and the stored image must show.

Unit tests drive the real components (ada, ICU, Pillow, img2dataset's Resizer, the fetch
opener against a real HTTP server on 127.0.0.1); the runs at the end go through the whole
pipeline (real Ray, real img2dataset) and check the manifest rows and the stored pixels.
"""

from __future__ import annotations

import textwrap

import pytest

from curate.core.config import ConfigError, load_config

# -- config: `resize_mode: no` in YAML, encode_format png with a quality ------------------


def _config_file(tmp_path, download_yaml: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(f"""\
        input: {{path: {tmp_path / 'in.parquet'}}}
        output: {{path: {tmp_path / 'run'}}}
        download:
        {textwrap.indent(download_yaml, '  ')}
        """))
    return path


@pytest.mark.parametrize("spelling", ["no", "No", "NO", "off", "false"])
def test_resize_mode_no_unquoted_in_yaml_means_no(tmp_path, spelling):
    """YAML 1.1 reads an unquoted `no` as false; the error used to say the value should be 'no'."""
    cfg = load_config(_config_file(tmp_path, f"resize_mode: {spelling}"))
    assert cfg.download.resize_mode == "no"
    assert load_config(None, [f"input.path={tmp_path}/x.parquet", f"download.resize_mode={spelling}"],
                       out=str(tmp_path / "r")).download.resize_mode == "no"


def test_other_yaml_booleans_in_a_word_key_say_to_quote_them(tmp_path):
    with pytest.raises(ConfigError, match=r"download.resize_mode: .*YAML read an unquoted word as the boolean true: quote it"):
        load_config(_config_file(tmp_path, "resize_mode: yes"))


@pytest.mark.parametrize("fmt,default", [("jpg", 95), ("webp", 95), ("png", 3)])
def test_encode_quality_defaults_per_format(tmp_path, fmt, default):
    cfg = load_config(None, [f"input.path={tmp_path}/x.parquet", f"download.encode_format={fmt}"], out=str(tmp_path / "r"))
    assert cfg.download.encode_quality == default


@pytest.mark.parametrize("settings,fits", [
    (["download.encode_format=png", "download.encode_quality=95"], False),  # JPEG's scale on PNG
    (["download.encode_format=png", "download.encode_quality=10"], False),
    (["download.encode_format=png", "download.encode_quality=0"], True),
    (["download.encode_format=png", "download.encode_quality=9"], True),
    (["download.encode_format=jpg", "download.encode_quality=0"], False),
    (["download.encode_format=webp", "download.encode_quality=100"], True),
])
def test_encode_quality_is_checked_against_the_format_at_start(tmp_path, settings, fits):
    overrides = [f"input.path={tmp_path}/x.parquet", *settings]
    if fits:
        load_config(None, overrides, out=str(tmp_path / "r"))
        return
    with pytest.raises(ConfigError, match=r"download.encode_quality: .*does not fit encode_format (png|jpg): for \w+ it is the"):
        load_config(None, overrides, out=str(tmp_path / "r"))


def test_a_run_started_by_the_previous_version_resumes(tmp_path):
    """It stored encode_quality: 95 (then the jpg default) and lacked the keys added here."""
    import yaml

    from curate.core.config import config_changes

    cfg = load_config(None, [f"input.path={tmp_path}/x.parquet"], out=str(tmp_path / "r"))
    old = yaml.safe_load(cfg.to_yaml())
    del old["input"]["encoding"], old["download"]["max_decode_bytes"]
    assert old["download"]["encode_quality"] == 95
    assert config_changes(yaml.safe_dump(old), cfg) == []


# -- URLs with raw non-ASCII characters (img2dataset #195/#318) ---------------------------


@pytest.mark.parametrize("given,fetched", [
    ("http://h.test/static/東京.jpg", "http://h.test/static/%E6%9D%B1%E4%BA%AC.jpg"),
    ("http://h.test/static/%E6%9D%B1%E4%BA%AC.jpg", "http://h.test/static/%E6%9D%B1%E4%BA%AC.jpg"),  # as given
    ("http://h.test/q.jpg?name=東京&size=a b", "http://h.test/q.jpg?name=%E6%9D%B1%E4%BA%AC&size=a%20b"),
    ("http://h.test/a photo.jpg", "http://h.test/a%20photo.jpg"),
    ("https://bücher.test/café.jpg", "https://xn--bcher-kva.test/caf%C3%A9.jpg"),  # IDNA host, UTF-8 path
    ("http://h.test/naïve/../x.jpg", "http://h.test/x.jpg"),  # encoded as a browser does: dot segments go
    ("http://h.test/x/../y.jpg", "http://h.test/x/../y.jpg"),  # ASCII: fetched byte for byte, as before
    ("http://１２７.0.0.1/x.jpg", "http://127.0.0.1/x.jpg"),  # full-width digits ARE 127.0.0.1 to a browser
    ("HTTP://H.test/Ü.jpg", "http://h.test/%C3%9C.jpg"),
])
def test_browser_url_encodes_what_http_cannot_carry(given, fetched):
    from curate.download.browser_url import browser_url

    assert browser_url(given) == fetched


@pytest.mark.parametrize("given", [None, "", "not a url", "ftp://h.test/ü.jpg", "http://h.test/a\tü.jpg",
                                   "http://exa mple.test/ü.jpg", "http://h.test:99999/ü.jpg"])
def test_browser_url_leaves_the_precheck_cases_alone(given):
    from curate.download.browser_url import browser_url

    assert browser_url(given) == given


def test_bytes_that_were_not_utf8_make_a_url_invalid_not_fetched():
    from curate.core.config import DownloadConfig
    from curate.pipeline.prepare import _with_precheck
    import pyarrow as pa

    rows = pa.table({"url": ["http://h.test/caf\ufffd.jpg", "http://１２７.0.0.1/x.jpg", "http://h.test/東京.jpg", None]})
    checked, fetch = _with_precheck(rows, DownloadConfig())
    assert checked.column("blocked_reason").to_pylist() == ["url_invalid", "private_host:127.0.0.1", None, "url_missing"]
    assert checked.column("url").to_pylist() == rows.column("url").to_pylist()  # rows/ keep the URL as given
    assert fetch.to_pylist()[2] == "http://h.test/%E6%9D%B1%E4%BA%AC.jpg"


# -- reasons are stable codes, never an exception's text ----------------------------------


@pytest.mark.parametrize("status,message,code", [
    ("failed_to_download", "'ascii' codec can't encode characters in position 12-13: ordinal not in range(128)", "invalid_request"),
    ("failed_to_download", "URL can't contain control characters. '/a b' (found at least ' ')", "invalid_request"),
    ("failed_to_download", "nonnumeric port: '99x'", "invalid_request"),
    ("failed_to_download", "unknown url type: 'htp'", "invalid_request"),
    ("failed_to_download", "IncompleteRead(10 bytes read, 90 more expected)", "incomplete_body"),
    ("failed_to_download", "got more than 65536 bytes when reading header line", "bad_http_response"),
    ("failed_to_download", "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "tls_error"),
    ("failed_to_download", "'HTTP/1.1 2xx [/bold] evil'", "download_error"),  # a BadStatusLine: the server's own text
    ("failed_to_download", "something odd: happened", "download_error"),
    ("failed_to_download", "a classless error", "download_error"),  # no code from a word inside a word
    ("failed_to_resize", "OpenCV(4.14.0) error: (-215:Assertion failed) !ssize.empty()", "resize_error"),
    ("failed_to_download", None, "download_error"),
])
def test_downloader_errors_map_to_stable_codes(status, message, code):
    from curate.download.download import download_reason

    assert download_reason(status, message) == code


# -- Content-Encoding on an image body (curl #2422) ---------------------------------------


def _jpeg(size=(96, 80), seed=1) -> bytes:
    from corpus import image_bytes

    return image_bytes("JPEG", size=size, seed=seed)


def _encoded(data: bytes, codec: str) -> bytes:
    import gzip
    import zlib

    import pyarrow as pa

    if codec == "gzip":
        return gzip.compress(data)
    if codec == "deflate":
        return zlib.compress(data)
    if codec == "raw-deflate":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, {"br": "brotli"}.get(codec, codec)) as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def content_encoding_routes(jpeg: bytes) -> dict:
    """path -> Route: an image/jpeg body under each Content-Encoding a server may send."""
    import gzip

    from curate.synth.http_server import Route

    def route(body: bytes, encoding: str) -> Route:
        return Route(body, headers=(("Content-Encoding", encoding),))

    return {
        "/enc/gzip.jpg": route(_encoded(jpeg, "gzip"), "gzip"),
        "/enc/x-gzip.jpg": route(_encoded(jpeg, "gzip"), "x-gzip"),
        "/enc/deflate.jpg": route(_encoded(jpeg, "deflate"), "deflate"),
        "/enc/raw-deflate.jpg": route(_encoded(jpeg, "raw-deflate"), "deflate"),
        "/enc/br.jpg": route(_encoded(jpeg, "br"), "br"),
        "/enc/zstd.jpg": route(_encoded(jpeg, "zstd"), "zstd"),
        "/enc/twice.jpg": route(gzip.compress(_encoded(jpeg, "br")), "br, gzip"),
        "/enc/identity.jpg": route(jpeg, "identity"),
        "/enc/not-gzip.jpg": route(jpeg, "gzip"),  # says gzip, sends the JPEG: browsers fail too
        "/enc/truncated.jpg": route(_encoded(jpeg, "gzip")[:-40], "GZIP"),
        "/enc/compress.jpg": route(jpeg, "compress"),
        "/enc/made-up.jpg": route(jpeg, "x-[/bold]-curate-refused"),
        "/enc/bomb.jpg": route(gzip.compress(b"\0" * (8 * 2**20)), "gzip"),
    }


CONTENT_ENCODING_EXPECTED = {
    "/enc/gzip.jpg": None, "/enc/x-gzip.jpg": None, "/enc/deflate.jpg": None, "/enc/raw-deflate.jpg": None,
    "/enc/br.jpg": None, "/enc/zstd.jpg": None, "/enc/twice.jpg": None, "/enc/identity.jpg": None,
    "/enc/not-gzip.jpg": "content_encoding_invalid:gzip",
    "/enc/truncated.jpg": "content_encoding_invalid:gzip",
    "/enc/compress.jpg": "content_encoding_unsupported:compress",
    "/enc/made-up.jpg": "content_encoding_unsupported:other",
    "/enc/bomb.jpg": "body_too_large:1048576",
}


def test_content_encoded_bodies_are_decoded_capped_and_refused_by_code():
    import urllib.request

    from curate.download.precheck import AddressPolicy
    from curate.download.safe_fetch import FetchPolicy, FetchRefused, build_opener
    from curate.synth.http_server import CorpusServer

    jpeg = _jpeg()
    policy = FetchPolicy(addresses=AddressPolicy(False, ("127.0.0.1/32",)), max_body_bytes=2**20)
    with CorpusServer(content_encoding_routes(jpeg)) as server:
        for path, expected in CONTENT_ENCODING_EXPECTED.items():
            try:
                with build_opener(policy).open(urllib.request.Request(server.url(path)), timeout=5) as response:
                    body, got = response.read(), None
            except FetchRefused as refused:
                body, got = None, refused.reason
            assert got == expected, path
            if expected is None:
                assert body == jpeg, path


# -- images: EXIF orientation, 16-bit, alpha, a memory budget per decode ------------------


def _resizer(max_decode_bytes: int = 512 * 2**20, resize_mode: str = "no", image_size: int = 256):
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset.resizer import Resizer

    from curate.download.image_decode import UprightResizer

    inner = Resizer(image_size=image_size, resize_mode=resize_mode, resize_only_if_bigger=False,
                    encode_format="png", encode_quality=3)  # lossless: stored pixels can be compared
    return UprightResizer(inner, max_decode_bytes)


def _run(resizer, data: bytes):
    import io

    import numpy as np
    from PIL import Image

    encoded, width, height, original_width, original_height, error = resizer(io.BytesIO(data))
    pixels = None if encoded is None else np.asarray(Image.open(io.BytesIO(encoded)))
    return pixels, (width, height, original_width, original_height), error


def marked_photo(orientation: int, size=(300, 150)) -> bytes:
    """A JPEG stored `size` wide and tall, red with a blue block at its stored top-left,
    with EXIF Orientation `orientation` (a phone photo: the camera stores it sideways)."""
    import io

    from PIL import Image

    image = Image.new("RGB", size, (220, 30, 30))
    image.paste((30, 30, 220), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def _blue_corner(pixels) -> str:
    """Which corner of an RGB array holds the blue block."""
    h, w = pixels.shape[:2]
    corners = {"top-left": pixels[5, 5], "top-right": pixels[5, w - 6], "bottom-left": pixels[h - 6, 5],
               "bottom-right": pixels[h - 6, w - 6]}
    return next(name for name, p in corners.items() if p[2] > 150 and p[0] < 100)


# Orientation -> (displayed size, where the stored top-left block is displayed)
ORIENTATIONS = {
    1: ((300, 150), "top-left"), 2: ((300, 150), "top-right"), 3: ((300, 150), "bottom-right"),
    4: ((300, 150), "bottom-left"), 5: ((150, 300), "top-left"), 6: ((150, 300), "top-right"),
    7: ((150, 300), "bottom-right"), 8: ((150, 300), "bottom-left"),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied_and_sizes_are_as_displayed(orientation):
    (width, height), corner = ORIENTATIONS[orientation]
    pixels, sizes, error = _run(_resizer(), marked_photo(orientation))
    assert error is None
    assert sizes == (width, height, width, height)
    assert pixels.shape == (height, width, 3) and _blue_corner(pixels) == corner


def test_exif_orientation_also_under_img2dataset_resizing():
    pixels, sizes, _ = _run(_resizer(resize_mode="border", image_size=64), marked_photo(6))
    assert sizes == (64, 64, 150, 300)  # original size as displayed, then border-resized
    assert _blue_corner(pixels[:, 16:48]) == "top-right"  # the upright image, padded left and right


def _png(array, mode=None) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, "PNG")
    return out.getvalue()


def _png16(rows, channels: int) -> bytes:
    """A 16-bit PNG (greyscale, RGB, RGBA) from big-endian samples, written chunk by chunk
    (Pillow writes 16-bit greyscale only)."""
    import struct
    import zlib

    import numpy as np

    samples = np.asarray(rows, dtype=">u2")
    height, width = samples.shape[:2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + samples[y].tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits():
    """The issue's image: 160x120, 0x8000 with a 0xF000 square. cv2 stored it all white."""
    import numpy as np

    samples = np.full((120, 160), 0x8000, np.uint16)
    samples[30:60, 40:80] = 0xF000
    pixels, sizes, error = _run(_resizer(), _png(samples))
    assert error is None and sizes == (160, 120, 160, 120)
    assert pixels.ndim == 2 and pixels[0, 0] == 0x80 and pixels[40, 50] == 0xF0  # the high byte
    assert set(np.unique(pixels)) == {0x80, 0xF0}


def test_sixteen_bit_colour_and_alpha_are_scaled_too():
    import numpy as np

    rgb = np.zeros((8, 10, 3), np.uint16)
    rgb[...] = (0x8000, 0x4000, 0xFFFF)
    pixels, _, error = _run(_resizer(), _png16(rgb, 3))
    assert error is None and tuple(pixels[0, 0]) == (0x80, 0x40, 0xFF)
    rgba = np.zeros((8, 10, 4), np.uint16)
    rgba[...] = (0, 0, 0, 0)  # fully transparent black: white once composited
    rgba[:, :5] = (0xFFFF, 0, 0, 0xFFFF)  # opaque red
    pixels, _, _ = _run(_resizer(), _png16(rgba, 4))
    assert tuple(pixels[0, 0]) == (255, 0, 0) and tuple(pixels[0, 9]) == (255, 255, 255)


def test_alpha_is_composited_on_white_as_img2dataset_did_without_float64():
    import numpy as np

    from img2dataset.resizer import Resizer

    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[:, :, :3] = (200, 40, 10)
    rgba[:, :, 3] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :]  # every alpha level
    data = _png(rgba, "RGBA")
    pixels, _, error = _run(_resizer(), data)
    old, _, _ = _run(Resizer(image_size=256, resize_mode="no", resize_only_if_bigger=False,
                             encode_format="png", encode_quality=3), data)
    assert error is None and pixels.shape == (64, 96, 3)
    assert np.abs(pixels.astype(int) - old.astype(int)).max() <= 1  # img2dataset's matting, in uint8
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[0, 95]) == (200, 40, 10)


def _paletted(size=(40, 30)):
    """A palette image: index 1 (the left half) opaque green, index 0 to be saved as transparent."""
    from PIL import Image

    image = Image.new("P", size, 0)
    image.putpalette([0, 0, 0, 0, 90, 0] + [0] * (254 * 3))
    image.paste(1, (0, 0, size[0] // 2, size[1]))
    return image


@pytest.mark.parametrize("kind", ["LA png", "palette png", "palette gif"])
def test_other_kinds_of_transparency_are_composited_too(kind):
    """Left half opaque dark, right half fully transparent (white once composited)."""
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    if kind == "LA png":
        image = Image.new("LA", (40, 30), (0, 0))
        image.paste((60, 255), (0, 0, 20, 30))
        image.save(out, "PNG")
    else:
        _paletted().save(out, "GIF" if kind.endswith("gif") else "PNG", transparency=0)
    pixels, _, error = _run(_resizer(), out.getvalue())
    assert error is None
    pixels = pixels if pixels.ndim == 3 else np.stack([pixels] * 3, axis=-1)
    assert tuple(pixels[15, 35]) == (255, 255, 255)
    assert max(pixels[15, 5]) < 100


def test_plain_images_reach_cv2_as_fetched():
    """8-bit, opaque, upright: the Resizer gets the body untouched (same bytes, same path as before)."""
    from corpus import image_bytes

    from curate.download.image_decode import prepare

    for data in (image_bytes("JPEG"), image_bytes("PNG"), image_bytes("JPEG", mode="CMYK"), marked_photo(1)):
        assert prepare(data, 512 * 2**20) == (None, None)


def test_decoded_bytes_reads_channels_and_depth_from_the_header():
    import io

    import numpy as np
    from PIL import Image

    from curate.download.image_decode import decoded_bytes

    def opened(data):
        return Image.open(io.BytesIO(data))

    assert decoded_bytes(opened(marked_photo(1))) == 300 * 150 * 3
    assert decoded_bytes(opened(_png(np.zeros((10, 20), np.uint16)))) == 200 * 1 * 2
    assert decoded_bytes(opened(_png16(np.zeros((10, 20, 4), np.uint16), 4))) == 200 * 4 * 2
    assert decoded_bytes(opened(_png(np.zeros((10, 20, 4), np.uint8), "RGBA"))) == 200 * 4
    out = io.BytesIO()
    _paletted((20, 10)).save(out, "PNG", transparency=0)
    assert decoded_bytes(opened(out.getvalue())) == 200 * 4


def test_an_image_over_the_decode_budget_is_refused_before_decoding():
    """The issue's shape, small: a PNG of a few KB that decodes to 6000x6000 RGBA (144 MB;
    img2dataset's float64 matting peaked at 3.2 GB for it)."""
    import numpy as np

    from curate.download.download import download_reason
    from curate.download.safe_fetch import verified_reason

    data = _png(np.zeros((6000, 6000, 4), np.uint8), "RGBA")
    assert len(data) < 1_000_000
    _, _, error = _run(_resizer(max_decode_bytes=6000 * 6000 * 4 - 1), data)
    # a signed verdict, read back in the worker as the shard's fetch_reason (safe_downloader)
    assert download_reason("failed_to_resize", error, verified_reason(error)) == "image_too_large:max_decode_bytes"
    _, _, error = _run(_resizer(max_decode_bytes=6000 * 6000 * 4), data)
    assert error is None


def test_a_body_pillow_cannot_identify_is_not_an_image():
    from curate.download.download import download_reason

    for body in (b"<html>not an image</html>", b"\x00" * 100, b"GIF89a"):
        _, _, error = _run(_resizer(), body)
        assert download_reason("failed_to_resize", error) == "not_an_image"


# -- CJK captions: words per script ------------------------------------------------------


@pytest.mark.parametrize("text,words", [
    ("a photo of a red bicycle", 6),
    ("一只红色的自行车靠在墙上", 8),  # Chinese: 一只/红色/的/自行/车/靠在/墙/上
    ("東京の夜景の写真", 5),  # Japanese: 東京/の/夜景/の/写真
    ("แมวนอนอยู่บนโซฟา", 5),  # Thai: แมว/นอน/อยู่/บน/โซฟา
    ("고양이가 소파에서 자고 있다", 4),  # Korean puts spaces between words
    ("iPhone 15 发布会现场", 5),
    ("「猫」", 1),
    ("IMG_1234.JPG - a b", 4),  # other scripts: whitespace tokens, as before
    ("", 0),
])
def test_count_words_per_script(text, words):
    from curate.stages.cheap_filters import count_words

    assert count_words(text) == words


def test_caption_rules_count_cjk_words():
    from stage_helpers import caption_reasons, config

    cfg = config()  # min 2 words, max 256
    assert caption_reasons(cfg, ["一只红色的自行车靠在墙上", "東京の夜景の写真", "猫", "红色" * 300]) == [
        None, None, "caption_too_short:2", "caption_too_long:256"]  # the first was caption_too_short:2


# -- long captions: a text model reads only its first tokens (SimpleTuner #283) -----------

TRUE_CAPTION = "a photo of a red bicycle leaning on a wall"
ONE_LONG_TOKEN = TRUE_CAPTION + " " + "x" * 3000  # the caption: 3,043 characters
# The caption and its neighbours, with what the shipped tiny models (CLIP's context:
# 16 tokens; BLIP ITM's text encoder: 64) read of each: None when all of it.
LONG_CAPTIONS = {
    TRUE_CAPTION: None,
    ONE_LONG_TOKEN: "clip:16",  # one BPE run of 750 tokens; one [UNK] in BERT's WordPiece (a word > 100 chars)
    " ".join(["a"] * 14): None,  # 16 CLIP tokens with start and end: exactly the context
    " ".join(["a"] * 15): "clip:16",  # 17: one over
    " ".join(["word"] * 80): "clip:16,itm:64",  # 82 tokens in both
    "一只红色的自行车靠在墙上" * 3: "clip:16",  # 38 in BERT (a token per Han character), 100+ bytes of BPE
}


@pytest.fixture(scope="module")
def text_models():
    """The tiny CLIP and ITM stages, set up as their actors are."""
    from stage_helpers import ready

    from curate.stages.blip_itm import ItmStage
    from curate.stages.clip_score import ClipStage

    return ready(ClipStage, "clip.model=curate:tiny-clip"), ready(ItmStage, "itm.model=curate:tiny-blip-itm")


def test_token_counts_are_the_lengths_each_tokenizer_makes(text_models):
    """A count is the length the model's own tokenizer gives the text when nothing cuts it:
    with one more position of context, the end token lands at the count and padding follows."""
    from curate.models import clip

    clip_stage, itm_stage = text_models
    texts = [*LONG_CAPTIONS, ""]
    tokenizer = clip_stage.tokenizer
    for text, n in zip(texts, clip.token_counts(tokenizer, texts)):
        ids = tokenizer([text], context_length=n + 1)[0].tolist()
        assert ids[n - 1] == tokenizer.eot_token_id and ids[n] == 0, text[:40]
    bert = itm_stage.processor.tokenizer
    for text, n in zip(texts, itm_stage.count_tokens(texts)):
        whole = bert(text)["input_ids"]
        assert len(whole) == n and bert(text, truncation=True, max_length=n)["input_ids"] == whole, text[:40]


def _scored(text_models, captions: list[str], synthetic: list[list[str]] | None = None):
    """``captions`` (one image each, no other row with its URL) through the CLIP and ITM
    stages, as the score step runs them on a downloaded shard."""
    import pyarrow as pa

    from corpus import image_bytes
    from curate.schemas.columns import ALTERNATES

    n = len(captions)
    batch = pa.table({
        "sample_id": [f"00000-{i:010d}" for i in range(n)], "caption": captions,
        "caption_bad_encoding": [False] * n, "download_reason": pa.array([None] * n, pa.string()),
        "jpg": [image_bytes("JPEG", seed=i) for i in range(n)],
        "synthetic_captions": pa.array(synthetic or [None] * n, pa.list_(pa.string())),
        # the captioner's votes: each synthetic caption sampled once
        "synthetic_votes": pa.array([[1] * len(s) if s else None for s in synthetic or [None] * n], pa.list_(pa.int16())),
        **{field.name: pa.nulls(n, field.type) for field in ALTERNATES},
    })
    for stage in text_models:
        batch = stage(batch)
    return batch


def test_each_caption_records_which_model_truncated_it_at_how_many_tokens(text_models):
    from stage_helpers import config, pairs_decision

    captions = list(LONG_CAPTIONS)
    scored = _scored(text_models, captions, synthetic=[[ONE_LONG_TOKEN]] + [None] * (len(captions) - 1))
    # no score thresholds (itm.min_prob defaults to 0.5): every status here is the token rule's
    cfg = config("clip.model=curate:tiny-clip", "itm.model=curate:tiny-blip-itm", "itm.min_prob=null",
                 "caption.model=curate:tiny-blip-captioner")
    decided = pairs_decision(cfg, scored)
    assert [d["status"] for d in decided] == ["kept"] * len(captions)  # recorded, not filtered: the key is off
    assert [d["captions"][0]["truncated"] for d in decided] == list(LONG_CAPTIONS.values())
    first = decided[1]["captions"][0]
    assert (first["text"], first["itm_tokens"], first["clip_tokens"] > 700) == (ONE_LONG_TOKEN, 13, True)
    assert decided[0]["captions"][1]["truncated"] == "clip:16"  # a synthetic caption is counted too
    assert decided[0]["captions"][0]["clip_tokens"] == 12 and decided[0]["captions"][0]["itm_tokens"] == 12


@pytest.mark.parametrize("models,limit,reasons", [
    (["clip", "itm"], 16, [None, "caption_too_long:16_clip_tokens", None, "caption_too_long:16_clip_tokens",
                           "caption_too_long:16_clip_tokens", "caption_too_long:16_clip_tokens"]),
    (["itm"], 64, [None, None, None, None, "caption_too_long:64_itm_tokens", None]),  # counted by ITM's tokenizer
    (["clip", "itm"], 64, [None, "caption_too_long:64_clip_tokens", None, None, "caption_too_long:64_clip_tokens",
                           "caption_too_long:64_clip_tokens"]),  # the first model over it names it
])
def test_max_caption_tokens_filters_by_each_enabled_models_tokenizer(text_models, models, limit, reasons):
    from stage_helpers import config, pairs_decision

    # no score thresholds (itm.min_prob defaults to 0.5): every reason here is the token rule's
    settings = {"clip": ("clip.model=curate:tiny-clip",), "itm": ("itm.model=curate:tiny-blip-itm", "itm.min_prob=null")}
    scored = _scored(text_models, list(LONG_CAPTIONS))
    if "clip" not in models:
        scored = scored.drop_columns([c for c in scored.column_names if "clip" in c])
    cfg = config(*(s for m in models for s in settings[m]), f"filters.max_caption_tokens={limit}")
    assert [d["reason"] for d in pairs_decision(cfg, scored)] == reasons


def test_max_caption_tokens_is_a_text_rule_that_holds_in_caption_only_mode(text_models):
    """caption_only drops the score thresholds, not the text rules: a synthetic caption CLIP
    would cut is still too long."""
    from stage_helpers import config, pairs_decision

    scored = _scored(text_models, ["IMG_0001.JPG"], synthetic=[[ONE_LONG_TOKEN, TRUE_CAPTION]])
    cfg = config("clip.model=curate:tiny-clip", "itm.model=curate:tiny-blip-itm", "clip.min_score=0.99",
                 "caption.model=curate:tiny-blip-captioner", "capfilt.mode=caption_only", "capfilt.max_synthetic=2",
                 "filters.max_caption_tokens=16")
    decided = pairs_decision(cfg, scored)[0]
    assert decided["caption_chosen"] == TRUE_CAPTION and decided["caption_source"] == "synthetic"
    assert {c["text"]: c["reason"] for c in decided["captions"]}[ONE_LONG_TOKEN] == "caption_too_long:16_clip_tokens"


def test_a_blip_tokenizer_without_a_limit_is_cut_at_the_encoders_positions(tmp_path):
    """A save_pretrained tokenizer without model_max_length reports a huge one and
    truncation=True cut nothing: a caption longer than the text encoder's 40 positions failed
    the whole batch (RuntimeError: the size of tensor a (62) must match ... b (40))."""
    from model_dirs import make_blip_dir
    from stage_helpers import ready

    from curate.stages.blip_itm import ItmStage

    stage = ready(ItmStage, f"itm.model={make_blip_dir(tmp_path / 'itm', 'itm', model_max_length=None)}")
    assert stage.processor.tokenizer.model_max_length > 10**9 and stage.max_tokens == 40
    scored = _scored([stage], ["a red cat on the grass", " ".join(["a cat"] * 30)])
    assert scored.column("itm_tokens").to_pylist() == [8, 62] and scored.column("itm_max_tokens").to_pylist() == [40, 40]
    assert all(p is not None for p in scored.column("itm_prob").to_pylist())


# -- the same URL many times (COCO: 5 captions per image; img2dataset #244) --------------


@pytest.mark.parametrize("a,b,same", [
    ("http://images.test/a.jpg", "http://images.test/a.jpg", True),
    ("HTTP://Images.TEST/a.jpg", "http://images.test/a.jpg", True),  # scheme and host are case-blind
    ("http://images.test:80/a.jpg", "http://images.test/a.jpg", True),  # the default port
    ("http://images.test/a.jpg#top", "http://images.test/a.jpg", True),  # a fragment is never sent
    ("http://images.test/x/../a.jpg", "http://images.test/a.jpg", True),
    ("http://images.test/東京.jpg", "http://images.test/%E6%9D%B1%E4%BA%AC.jpg", True),  # as fetched
    ("https://images.test/a.jpg", "http://images.test/a.jpg", False),
    ("http://images.test/a.jpg?size=2", "http://images.test/a.jpg", False),
    ("http://images.test/A.jpg", "http://images.test/a.jpg", False),  # paths are case-sensitive
    ("http://images.test:8080/a.jpg", "http://images.test/a.jpg", False),
])
def test_url_key_is_the_resource_a_browser_requests(a, b, same):
    from curate.pipeline.same_url import url_key
    from curate.download.browser_url import browser_url

    assert (url_key(browser_url(a)) == url_key(browser_url(b))) is same


A = "http://images.test/a.jpg"
B = "http://images.test/b.jpg"
PRIVATE = "http://127.0.0.1/c.jpg"
# Three input files. URL A: five distinct captions (COCO's layout), a repeat of one, a
# sixth; in every file, and spelled another way once; B twice (once without a caption);
# other URLs that are not A; a blocked URL twice.
SAME_URL_FILES = [
    [(A, "a man riding a red bicycle"), (B, "a green field"), (A, "a person on a bike"),
     (A, " a man  riding a red bicycle")],
    [(A, "a cyclist in the city"), ("HTTP://Images.TEST:80/a.jpg#top", "a bicycle parked outside"),
     (PRIVATE, "x"), (PRIVATE, "y"), (A, "a bike")],
    [(A, "a red bicycle leaning on a wall"), (B, None), ("https://images.test/a.jpg", "https is another url"),
     (A + "?size=2", "a query is another url")],
]
# sample_id -> (what the manifest will say before download, the alternates it is fetched with)
SAME_URL_WANT = {
    "00000-0000000000": (None, ["a person on a bike", "a cyclist in the city", "a bicycle parked outside", "a bike"]),
    "00000-0000000001": (None, [None]),
    "00000-0000000002": ("same_url_as:00000-0000000000", None),
    "00000-0000000003": ("same_url_as:00000-0000000000", None),  # its caption is the sample's own
    "00001-0000000000": ("same_url_as:00000-0000000000", None),
    "00001-0000000001": ("same_url_as:00000-0000000000", None),
    "00001-0000000002": ("private_host:127.0.0.1", None),  # blocked rows are never fetched, nor merged
    "00001-0000000003": ("private_host:127.0.0.1", None),
    "00001-0000000004": ("same_url_as:00000-0000000000", None),  # the 5th caption: the last alternate
    "00002-0000000000": ("same_url_not_scored:00000-0000000000", None),  # the 6th: over max_captions_per_url
    "00002-0000000001": ("same_url_as:00000-0000000001", None),
    "00002-0000000002": (None, None),
    "00002-0000000003": (None, None),
}


def _write_inputs(root, files, first: int = 0) -> None:
    """``files`` (lists of (url, caption)) as Parquet input files ``<first>.parquet``, ... of
    2-row groups in ``root/in``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "in").mkdir(parents=True, exist_ok=True)
    for k, rows in enumerate(files, first):
        pq.write_table(pa.table({"url": [u for u, _ in rows], "caption": pa.array([c for _, c in rows], pa.string())}),
                       root / "in" / f"{k}.parquet", row_group_size=2)


def _prepared(root, files, *settings) -> dict:
    """``files`` (lists of (url, caption)) as Parquet input files of 2-row groups, through the
    prepare step -> sample_id -> (same_url_reason or blocked_reason, alternate captions in
    the download list; "-" for a row not in it)."""
    _write_inputs(root, files)
    return _prepare(root, *settings)


def _prepare(root, *settings) -> dict:
    """The prepare step over ``root/in`` into ``root/run`` (parts it committed before are kept),
    as ``_prepared`` gives it."""
    from curate.core import storage
    from curate.core.inputs import resolve_input_files
    from curate.core.rundir import RunDir
    from curate.flow.plan import make_plan
    from curate.pipeline.prepare import prepare

    cfg = load_config(None, [f"input.path={root / 'in'}", "input.format=parquet", "input.max_captions_per_url=5",
                             *settings], out=str(root / "run"))
    run = RunDir(cfg.output.path)
    counts = prepare(make_plan(cfg), run, resolve_input_files(cfg.input))
    rows = storage.read_parquet(storage.list_files(run.rows, ".parquet")).sort_by("sample_id").to_pylist()
    listed = storage.read_parquet(storage.list_files(run.download_list, ".parquet")).to_pylist()
    assert not (root / "run" / "_same_url").exists()  # the buckets' scratch files are gone
    fetched = {r["sample_id"]: r["alternate_captions"] for r in listed}
    assert counts["rows"] - counts["blocked"] - counts["merged"] == len(fetched)
    return {r["sample_id"]: (r.get("same_url_reason") or r["blocked_reason"], fetched.get(r["sample_id"], "-"))
            for r in rows}


def test_rows_with_one_url_become_one_sample_whatever_the_parts(tmp_path, ray_session):
    """The representative is the smallest sample_id, its alternates the next distinct
    captions in sample_id order, whether the rows are in one part, one per file, or a part
    per two rows (each part a prepare task, each bucket a group task)."""
    want = {sid: (reason, "-" if reason else alternates) for sid, (reason, alternates) in SAME_URL_WANT.items()}
    for partition_rows in (1000, 2, 1):
        got = _prepared(tmp_path / f"p{partition_rows}", SAME_URL_FILES, f"manifest.partition_rows={partition_rows}")
        assert got == want, partition_rows


def test_a_part_prepared_again_gets_the_verdicts_it_had(tmp_path, ray_session):
    """A resume redoes a damaged part (the resume check removed its files' markers): it is read
    from its input again and grouped with the other parts' rows, read back from rows/ with
    what their samples carry. Its rows get the verdicts they had, its samples the same
    alternates, whether it holds a URL's representative or rows of a sample in another part."""
    from curate.core import storage
    from curate.pipeline.prepare import PART_MARKERS, ROWS_MARKERS

    want = _prepared(tmp_path, SAME_URL_FILES, "manifest.partition_rows=2")
    run = tmp_path / "run"
    # 00000-0000: URL A's representative and B's; 00001-0002: "a bike", an alternate of A's sample
    for part in ("00000-0000", "00001-0002"):
        (run / "rows" / f"part-{part}.parquet").unlink()
        for markers in (PART_MARKERS, ROWS_MARKERS):
            storage.remove_tree(str(run / "_done" / markers / f"{part}.json"))
        assert _prepare(tmp_path, "manifest.partition_rows=2") == want, part


def test_extend_groups_new_rows_with_the_samples_of_old_ones(tmp_path, ray_session):
    """A file added later (--extend) is prepared with the earlier files' parts as they are: a
    new row whose URL an old sample has is not fetched again; it is same_url_as that sample
    when its caption is one the sample carries, else same_url_not_scored (the sample was
    scored without it: docs/run-directory.md, Extend)."""
    _write_inputs(tmp_path, SAME_URL_FILES[:2])
    _prepare(tmp_path, "manifest.partition_rows=2")
    _write_inputs(tmp_path, SAME_URL_FILES[2:], first=2)
    got = _prepare(tmp_path, "manifest.partition_rows=2")
    want = {sid: (reason, "-" if reason else alternates) for sid, (reason, alternates) in SAME_URL_WANT.items()}
    # One run over the three files: B's caption-less row is an alternate of B's sample. Here
    # B's sample was prepared with the first two files, where B had no other row.
    want["00000-0000000001"] = (None, None)
    want["00002-0000000001"] = ("same_url_not_scored:00000-0000000001", "-")
    assert got == want


def test_max_captions_per_url_and_merge_same_url(tmp_path, ray_session):
    one = _prepared(tmp_path / "one", SAME_URL_FILES, "input.max_captions_per_url=1")
    assert one["00000-0000000000"] == (None, None)
    assert one["00000-0000000003"] == ("same_url_as:00000-0000000000", "-")  # the sample's own caption again
    assert one["00000-0000000002"] == one["00001-0000000004"] == ("same_url_not_scored:00000-0000000000", "-")
    apart = _prepared(tmp_path / "apart", SAME_URL_FILES, "input.merge_same_url=false")
    assert {sid: reason for sid, (reason, _) in apart.items() if reason} == {
        "00001-0000000002": "private_host:127.0.0.1", "00001-0000000003": "private_host:127.0.0.1"}
    assert all(alternates is None for reason, alternates in apart.values() if not reason)


# -- whole runs: real HTTP server, real Ray, real img2dataset -----------------------------

GOOD = "a photo of a red bicycle leaning on a wall"


class RawServer:
    """A TCP server on 127.0.0.1 answering every request with fixed bytes chosen by path:
    responses no HTTP library would send (a body shorter than its Content-Length, a
    header line longer than http.client accepts)."""

    def __init__(self, answers: dict[str, bytes]):
        import socket
        import threading

        self.answers = answers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    request = conn.recv(65536).decode("latin-1")
                    path = request.split(" ", 2)[1] if request.count(" ") >= 2 else "/"
                    conn.sendall(self.answers.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


def _raw_answers(jpeg: bytes) -> dict[str, bytes]:
    return {
        "/short-body.jpg": b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                           % (len(jpeg) + 1000) + jpeg,
        "/long-header.jpg": b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 70_000 + b"\r\n\r\n",
    }


def _rgba_half_transparent(size=(96, 80)) -> bytes:
    import numpy as np

    rgba = np.zeros((size[1], size[0], 4), np.uint8)
    rgba[:, : size[0] // 2] = (20, 60, 200, 255)  # left: opaque blue; right: transparent
    return _png(rgba, "RGBA")


def _sixteen_bit_grey() -> bytes:
    import numpy as np

    samples = np.full((120, 160), 0x8000, np.uint16)
    samples[30:60, 40:80] = 0xF000
    return _png(samples)


def test_a_body_cut_short_of_its_content_length_is_incomplete_not_an_image():
    """CappedResponse reads with read1, which ends quietly at EOF: a body cut short used to
    be accepted (a progressive JPEG's prefix still decodes)."""
    import urllib.request

    from curate.download.download import download_reason
    from curate.download.precheck import AddressPolicy
    from curate.download.safe_fetch import FetchPolicy, FetchVerdict, build_opener, verified_reason

    raw = RawServer(_raw_answers(_jpeg()))
    try:
        opener = build_opener(FetchPolicy(addresses=AddressPolicy(False, ("127.0.0.1/32",))))
        with pytest.raises(FetchVerdict) as caught:  # http.client's IncompleteRead, classified by its type
            with opener.open(urllib.request.Request(raw.url("/short-body.jpg")), timeout=5) as response:
                response.read()
    finally:
        raw.close()
    message = str(caught.value)  # what img2dataset keeps; the worker verifies it into fetch_reason
    assert caught.value.reason == "incomplete_body"
    assert download_reason("failed_to_download", message, verified_reason(message)) == "incomplete_body"


@pytest.fixture(scope="module")
def wild_run(tmp_path_factory, ray_session):
    """Every image/URL/body row of the issue in one run, configured from a YAML file that
    says `resize_mode: no` and `encode_format: png` (unquoted, no quality)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from corpus import image_bytes
    from curate.pipeline.runner import run_pipeline
    from curate.synth.http_server import CorpusServer, Route
    from e2e import FAST_SETTINGS

    tmp = tmp_path_factory.mktemp("wild")
    jpeg = image_bytes("JPEG", seed=21)
    routes = {
        "/static/東京.jpg": Route(image_bytes("JPEG", seed=22)),
        "/q.jpg": Route(image_bytes("JPEG", seed=23)),
        "/idn.jpg": Route(image_bytes("JPEG", seed=24)),
        "/a photo.jpg": Route(image_bytes("JPEG", seed=25)),
        "/exif-6.jpg": Route(marked_photo(6)), "/exif-3.jpg": Route(marked_photo(3)), "/exif-8.jpg": Route(marked_photo(8)),
        "/grey16.png": Route(_sixteen_bit_grey(), content_type="image/png"),
        "/rgba.png": Route(_rgba_half_transparent(), content_type="image/png"),
        "/gzip.jpg": Route(_encoded(jpeg, "gzip"), headers=(("Content-Encoding", "gzip"),)),
        "/br.jpg": Route(_encoded(image_bytes("JPEG", seed=26), "br"), headers=(("Content-Encoding", "br"),)),
        "/says-gzip.jpg": Route(image_bytes("JPEG", seed=27), headers=(("Content-Encoding", "gzip"),)),
        "/budget.png": Route(_png(np.zeros((600, 600, 4), np.uint8), "RGBA"), content_type="image/png"),  # 1.44 MB decoded
        "/plain.jpg": Route(image_bytes("JPEG", seed=28)),
        "/chinese.jpg": Route(image_bytes("JPEG", seed=29)),
    }
    raw = RawServer(_raw_answers(jpeg))
    with CorpusServer(routes) as server:
        port = server.base_url.rsplit(":", 1)[1]
        u = server.url
        rows = [  # (url, caption, status, reason)
            (u("/static/東京.jpg"), GOOD, "kept", None),
            (u("/q.jpg") + "?name=東京&size=a b", GOOD, "kept", None),
            (f"http://bücher.test:{port}/idn.jpg", GOOD, "kept", None),
            (u("/a photo.jpg"), GOOD, "kept", None),
            (u("/exif-6.jpg"), GOOD, "kept", None),
            (u("/exif-3.jpg"), GOOD, "kept", None),
            (u("/exif-8.jpg"), GOOD, "kept", None),
            (u("/grey16.png"), GOOD, "kept", None),
            (u("/rgba.png"), GOOD, "kept", None),
            (u("/gzip.jpg"), GOOD, "kept", None),
            (u("/br.jpg"), GOOD, "kept", None),
            (u("/says-gzip.jpg"), GOOD, "download_failed", "content_encoding_invalid:gzip"),
            (u("/budget.png"), GOOD, "download_failed", "image_too_large:max_decode_bytes"),
            (u("/plain.jpg"), b"caf\xe9 au lait, a photo", "filtered", "caption_bad_encoding"),  # bytes: not UTF-8
            (u("/caf").encode() + b"\xe9.jpg", GOOD, "blocked", "url_invalid"),
            (u("/chinese.jpg"), "一只红色的自行车靠在墙上", "kept", None),
            (raw.url("/short-body.jpg"), GOOD, "download_failed", "incomplete_body"),
            (raw.url("/long-header.jpg"), GOOD, "download_failed", "bad_http_response"),
        ]
        cell = lambda v: v if isinstance(v, bytes) else v.encode()  # noqa: E731
        table = pa.table({  # string-typed columns, some holding bytes that are not UTF-8
            "url": pa.array([cell(r[0]) for r in rows], pa.binary()).view(pa.string()),
            "caption": pa.array([cell(r[1]) for r in rows], pa.binary()).view(pa.string()),
        })
        pq.write_table(table, tmp / "in.parquet")
        config = tmp / "config.yaml"
        config.write_text(f"input: {{path: {tmp / 'in.parquet'}}}\n"
                          "download:\n  resize_mode: no\n  encode_format: png\n")
        overrides = FAST_SETTINGS + ["dedupe.enabled=false", "download.max_decode_bytes=1000000",
                                     "download.resolve={'xn--bcher-kva.test': '127.0.0.1'}"]
        cfg = load_config(config, overrides, out=str(tmp / "run"))
        result = run_pipeline(cfg)
        requests = list(server.requests)
    raw.close()
    return rows, result, str(tmp / "run"), requests


def _stored_images(run_root: str, result) -> dict:
    """sample_id -> stored pixels (RGB or grey array), from the output Parquet shards."""
    import io

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    files = [f"{run_root}/output/{s['name']}.parquet" for s in result.index["shards"]]
    table = pq.ParquetDataset(files).read(columns=["sample_id", "png"])
    return {sid: np.asarray(Image.open(io.BytesIO(data)))
            for sid, data in zip(table.column("sample_id").to_pylist(), (i["bytes"] for i in table.column("png").to_pylist()))}


def test_wild_rows_get_their_status_and_reason(wild_run):
    from e2e import read_manifest

    rows, _, run_root, _ = wild_run
    manifest = read_manifest(run_root).to_pylist()
    assert len(manifest) == len(rows)
    got = [(m["status"], m["reason"]) for m in manifest]
    assert got == [(status, reason) for _, _, status, reason in rows]


def test_manifest_keeps_urls_and_captions_as_given(wild_run):
    from e2e import read_manifest

    rows, _, run_root, requests = wild_run
    manifest = read_manifest(run_root).to_pylist()
    as_text = lambda v: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v  # noqa: E731
    assert [m["url"] for m in manifest] == [as_text(r[0]) for r in rows]
    assert [m["caption"] for m in manifest] == [as_text(r[1]) for r in rows]
    assert "/static/%E6%9D%B1%E4%BA%AC.jpg" in requests  # fetched as a browser would ask
    assert "/q.jpg?name=%E6%9D%B1%E4%BA%AC&size=a%20b" in requests and "/a%20photo.jpg" in requests
    chinese = next(m for m in manifest if m["url"].endswith("/chinese.jpg"))
    assert chinese["caption_chosen"] == "一只红色的自行车靠在墙上"


def test_stored_images_are_upright_eight_bit_and_composited(wild_run):
    from e2e import read_manifest

    rows, result, run_root, _ = wild_run
    manifest = {m["url"].rsplit("/", 1)[-1]: m for m in read_manifest(run_root).to_pylist()}
    images = _stored_images(run_root, result)
    for name, (size, corner) in {"exif-6.jpg": ORIENTATIONS[6], "exif-3.jpg": ORIENTATIONS[3],
                                 "exif-8.jpg": ORIENTATIONS[8]}.items():
        m = manifest[name]
        assert (m["original_width"], m["original_height"]) == size == (m["width"], m["height"])  # resize_mode: no
        assert _blue_corner(images[m["sample_id"]]) == corner
    grey = images[manifest["grey16.png"]["sample_id"]]
    assert grey.shape == (120, 160) and grey[0, 0] == 0x80 and grey[40, 50] == 0xF0
    rgba = images[manifest["rgba.png"]["sample_id"]]
    assert tuple(rgba[40, 10]) == (20, 60, 200) and tuple(rgba[40, 90]) == (255, 255, 255)


def test_gzip_encoded_image_is_stored_as_the_image(wild_run):
    import io

    import numpy as np
    from PIL import Image

    from corpus import image_bytes
    from e2e import read_manifest

    rows, result, run_root, _ = wild_run
    m = next(m for m in read_manifest(run_root).to_pylist() if m["url"].endswith("/gzip.jpg"))
    stored = _stored_images(run_root, result)[m["sample_id"]]
    served = np.asarray(Image.open(io.BytesIO(image_bytes("JPEG", seed=21))).convert("RGB"))
    assert stored.shape == served.shape and np.abs(stored.astype(int) - served.astype(int)).mean() < 2


def test_excel_csv_gz_stops_with_nothing_written_then_runs_with_input_encoding(tmp_path, ray_session):
    """The issue's Excel export (cp1252), gzipped: the first run stops before anything is
    written (an --out folder that existed keeps its other files), and the same command
    with input.encoding then runs instead of being refused as another run's resume."""
    import gzip

    from corpus import image_bytes
    from curate.core.inputs import InputError
    from curate.pipeline.runner import run_pipeline
    from curate.synth.http_server import CorpusServer, Route
    from e2e import FAST_SETTINGS, read_manifest

    routes = {"/café.jpg": Route(image_bytes("JPEG", seed=31)), **{f"/{i}.jpg": Route(image_bytes("JPEG", seed=32 + i))
                                                                  for i in range(4)}}
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with CorpusServer(routes) as server:
        rows = [(server.url("/café.jpg"), "café crème au lait, une photo"), (server.url("/0.jpg"), "NA"),
                (server.url("/1.jpg"), "NaN"), (server.url("/2.jpg"), ""), (server.url("/3.jpg"), '"null" island, a map')]
        text = "url,caption,crédit\n" + "".join(f'{u},"{c.replace(chr(34), chr(34) * 2)}",Jérôme\n' for u, c in rows)
        (tmp_path / "excel.csv.gz").write_bytes(gzip.compress(text.encode("cp1252")))
        settings = FAST_SETTINGS + ["dedupe.enabled=false", f"input.path={tmp_path / 'excel.csv.gz'}"]
        with pytest.raises(InputError, match=r"excel.csv.gz is not utf-8: byte 0xE9 at offset 14 \(line 1\).*cp1252"):
            run_pipeline(load_config(None, settings, out=str(out)))
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
        run_pipeline(load_config(None, settings + ["input.encoding=cp1252"], out=str(out)))
    manifest = read_manifest(str(out)).to_pylist()
    assert [m["url"] for m in manifest] == [u for u, _ in rows]  # as given (é decoded from cp1252)
    assert [m["caption"] for m in manifest] == ["café crème au lait, une photo", "NA", "NaN", None, '"null" island, a map']
    assert [(m["status"], m["reason"]) for m in manifest] == [
        ("kept", None), ("filtered", "caption_junk:boilerplate"), ("filtered", "caption_too_short:2"),
        ("filtered", "caption_empty"), ("kept", None)]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_model_pool_that_cannot_fit_stops_with_nothing_written(tmp_path, ray_session):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.pipeline.runner import run_pipeline

    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": [GOOD]}), tmp_path / "in.parquet")
    settings = [f"input.path={tmp_path / 'in.parquet'}", "clip.model=curate:tiny-clip", "clip.actors=3", "clip.num_cpus=1"]
    with pytest.raises(ConfigError, match="the model stages need"):
        run_pipeline(load_config(None, settings, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    run_pipeline(load_config(None, settings[:2], out=str(tmp_path / "run")))  # the corrected command runs


# -- a whole run with the text models: long captions and one URL in many rows ------------

COCO = ["a man riding a red bicycle", "a person on a bike near a wall", "a red bicycle leaning on a wall",
        "a cyclist in the city", "a bicycle parked outside"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, ray_session):
    """The issue's long caption and COCO's five captions of one image, with neighbours, in one
    run with the tiny CLIP and ITM; the input is two files cut into parts of 3 rows (its
    manifest in 6 partitions), so one URL's rows are in different files and partitions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from corpus import image_bytes
    from curate.pipeline.runner import run_pipeline
    from curate.synth.http_server import CorpusServer
    from curate.synth.http_server import Route
    from e2e import FAST_SETTINGS

    tmp = tmp_path_factory.mktemp("text-run")
    paths = ["/coco.jpg", "/long.jpg", "/words.jpg", "/many.jpg"]
    routes = {p: Route(image_bytes("JPEG", seed=40 + i)) for i, p in enumerate(paths)}
    with CorpusServer(routes) as server:
        u = server.url
        files = [
            [(u("/coco.jpg"), COCO[0]), (u("/long.jpg"), ONE_LONG_TOKEN), (u("/coco.jpg"), COCO[1]),
             (u("/gone.jpg"), "a picture that is not there"), (u("/coco.jpg"), COCO[2]),
             *[(u("/many.jpg"), f"picture number {k} of many") for k in range(3)]],
            [(u("/coco.jpg"), COCO[3]), (u("/gone.jpg"), "the same missing picture"),
             (u("/coco.jpg") + "#caption-5", COCO[4]), (u("/words.jpg"), " ".join(["word"] * 80)),
             (u("/coco.jpg"), " " + COCO[0]),  # the first caption again
             *[(u("/many.jpg"), f"picture number {k} of many") for k in range(3, 7)]],
        ]
        (tmp / "in").mkdir()
        for k, rows in enumerate(files):
            pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows]}),
                           tmp / "in" / f"{k}.parquet", row_group_size=3)
        settings = FAST_SETTINGS + [
            f"input.path={tmp / 'in'}", "input.format=parquet", "input.max_captions_per_url=5",
            "manifest.partition_rows=3", "download.shard_size=2", "dedupe.enabled=false", "report.enabled=false",
            "clip.model=curate:tiny-clip", "clip.num_cpus=0.5", "clip.threads=1",
            "itm.model=curate:tiny-blip-itm", "itm.num_cpus=0.5", "itm.threads=1",
            "itm.min_prob=null"]  # no score thresholds: every status here is the same-URL or token rules'

        cfg = load_config(None, settings, out=str(tmp / "run"))
        result = run_pipeline(cfg)
        requests = list(server.requests)
    return cfg, result, str(tmp / "run"), requests


def _by_id(run_root: str) -> dict[str, dict]:
    from e2e import read_manifest

    return {m["sample_id"]: m for m in read_manifest(run_root).to_pylist()}


def test_each_url_is_fetched_once_and_every_row_says_where_it_went(text_run):
    _, result, run_root, requests = text_run
    assert sorted(requests) == ["/coco.jpg", "/gone.jpg", "/long.jpg", "/many.jpg", "/words.jpg"]
    coco, gone, many = "00000-0000000000", "00000-0000000003", "00000-0000000005"
    want = {
        coco: ("kept", None), "00000-0000000001": ("kept", None), "00000-0000000002": ("duplicate", f"same_url_as:{coco}"),
        gone: ("download_failed", "http_404"), "00000-0000000004": ("duplicate", f"same_url_as:{coco}"),
        many: ("kept", None), "00000-0000000006": ("duplicate", f"same_url_as:{many}"),
        "00000-0000000007": ("duplicate", f"same_url_as:{many}"),
        "00001-0000000000": ("duplicate", f"same_url_as:{coco}"), "00001-0000000001": ("duplicate", f"same_url_as:{gone}"),
        "00001-0000000002": ("duplicate", f"same_url_as:{coco}"), "00001-0000000003": ("kept", None),
        "00001-0000000004": ("duplicate", f"same_url_as:{coco}"),
        "00001-0000000005": ("duplicate", f"same_url_as:{many}"), "00001-0000000006": ("duplicate", f"same_url_as:{many}"),
        "00001-0000000007": ("duplicate", f"same_url_not_scored:{many}"),
        "00001-0000000008": ("duplicate", f"same_url_not_scored:{many}"),
    }
    assert {sid: (m["status"], m["reason"]) for sid, m in _by_id(run_root).items()} == want
    assert result.summary["rows_in"] == len(want) and result.summary["statuses"]["duplicate"] == 12


def test_alternates_are_scored_and_judged_like_the_original(text_run):
    _, _, run_root, _ = text_run
    sample = _by_id(run_root)["00000-0000000000"]
    assert [(c["text"], c["source"]) for c in sample["captions"]] == [
        (COCO[0], "original"), *[(text, "alternate") for text in COCO[1:]]]
    for c in sample["captions"]:
        assert c["kept"] and c["reason"] is None
        assert None not in (c["clip_score"], c["itm_prob"], c["itm_cosine"], c["clip_tokens"], c["itm_tokens"])
    # the training caption: the input caption ITM and CLIP rank best together (the sum of its
    # ranks by each, curate.flow.captions.judged_rank_sql; on a tie the earlier; no thresholds: all pass)
    captions = sample["captions"]

    def judged(c):
        return sum(1 + sum(o[j] < c[j] for o in captions) for j in ("itm_prob", "clip_score"))

    best = max(captions, key=judged)  # max(): the first of equals
    assert (sample["caption_chosen"], sample["caption_source"]) == (best["text"], best["source"])
    many = _by_id(run_root)["00000-0000000005"]
    assert [c["text"] for c in many["captions"]] == [f"picture number {k} of many" for k in range(5)]


def test_the_shard_record_carries_the_alternates(text_run):
    import pyarrow.parquet as pq

    _, result, run_root, _ = text_run
    files = [f"{run_root}/output/{s['name']}.parquet" for s in result.index["shards"]]
    records = {r["sample_id"]: r for r in pq.ParquetDataset(files).read(columns=["sample_id", "captions"]).to_pylist()}
    captions = records["00000-0000000000"]["captions"]
    assert [(c["text"], c["source"]) for c in captions] == [(COCO[0], "original"), *[(t, "alternate") for t in COCO[1:]]]
    assert set(captions[0]) == {"text", "source", "clip_score", "itm_prob", "itm_cosine"}


def test_the_long_caption_is_kept_with_its_cut_recorded_and_refilters_by_tokens(text_run):
    from curate.core.rundir import RunDir
    from curate.flow.plan import make_plan
    from curate.pipeline.decide import preview

    cfg, _, run_root, _ = text_run
    long, words = _by_id(run_root)["00000-0000000001"], _by_id(run_root)["00001-0000000003"]
    assert long["status"] == "kept" and long["caption_chosen"] == ONE_LONG_TOKEN and len(ONE_LONG_TOKEN) == 3043
    assert (long["captions"][0]["truncated"], long["captions"][0]["itm_tokens"]) == ("clip:16", 13)
    assert words["captions"][0]["truncated"] == "clip:16,itm:64"
    # the counts are stored: filters.max_caption_tokens re-decides the run without a model
    strict = make_plan(cfg.model_copy(update={"filters": cfg.filters.model_copy(update={"max_caption_tokens": 16})}))
    manifest = {m["sample_id"]: m for m in preview(strict, RunDir(run_root))["manifest"].to_pylist()}
    assert manifest["00000-0000000001"]["reason"] == "caption_too_long:16_clip_tokens"
    assert manifest["00001-0000000003"]["reason"] == "caption_too_long:16_clip_tokens"
    assert manifest["00000-0000000000"]["status"] == "kept"  # COCO's captions fit in 16 tokens


def test_the_manifest_docs_queries_answer_on_this_run(text_run, repo_root):
    import re

    from curate.core.views import run_query

    _, _, run_root, _ = text_run
    text = (repo_root / "docs" / "manifest.md").read_text()
    sections = {title: body for title, body in re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)}
    merged = re.findall(r"```sql\n(.*?)```", sections["One URL, many rows"], flags=re.S)
    got = run_query(run_root, merged[0]).to_pylist()
    assert {(r["sample_id"], len(r["given"]), r["merged_rows"]) for r in got} == {
        ("00000-0000000000", 5, 5), ("00000-0000000005", 5, 4)}
    truncated = re.findall(r"```sql\n(.*?)```", sections["Truncated captions"], flags=re.S)[0].split(";")
    per_model = {(r["truncated"], r["source"]): r["count_star()"] for r in run_query(run_root, truncated[0]).to_pylist()}
    assert per_model == {("clip:16", "original"): 1, ("clip:16,itm:64", "original"): 1}
    assert [r["sample_id"] for r in run_query(run_root, truncated[1]).to_pylist()] == [
        "00000-0000000001", "00001-0000000003"]
