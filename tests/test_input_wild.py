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
    from curate.stages.browser_url import browser_url

    assert browser_url(given) == fetched


@pytest.mark.parametrize("given", [None, "", "not a url", "ftp://h.test/ü.jpg", "http://h.test/a\tü.jpg",
                                   "http://exa mple.test/ü.jpg", "http://h.test:99999/ü.jpg"])
def test_browser_url_leaves_the_precheck_cases_alone(given):
    from curate.stages.browser_url import browser_url

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
    ("failed_to_resize", "OpenCV(4.14.0) error: (-215:Assertion failed) !ssize.empty()", "resize_error"),
    ("failed_to_download", None, "download_error"),
])
def test_downloader_errors_map_to_stable_codes(status, message, code):
    from curate.stages.download import download_reason

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

    from curate.stages.precheck import AddressPolicy
    from curate.stages.safe_fetch import FetchPolicy, FetchRefused, build_opener
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
