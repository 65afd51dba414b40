import re

import pytest

from corpus import blocked_rows
from curate.pipeline.config import FilterConfig
from curate.stages.cheap_filters import caption_reject, image_reject, junk_kind
from curate.stages.download import download_reason
from curate.stages.precheck import check_url


@pytest.mark.parametrize("row", blocked_rows(), ids=lambda r: r["caption"])
def test_blocked_urls(row):
    got = check_url(row["url"], allow_private_hosts=False)
    assert got is not None and got.split(":")[0] == row["reason"]


@pytest.mark.parametrize(
    "url", ["http://example.com/a.jpg", "https://8.8.8.8/x.png", "HTTPS://Example.COM/a%20b.jpg?x=1"]
)
def test_public_urls_pass(url):
    assert check_url(url, allow_private_hosts=False) is None


def test_allow_private_hosts_lifts_the_address_check_only():
    assert check_url("http://127.0.0.1:8000/a.jpg", allow_private_hosts=True) is None
    assert check_url("http://127.0.0.1:8000/a.jpg", allow_private_hosts=False) == "private_host:127.0.0.1"
    assert check_url("ftp://127.0.0.1/a", allow_private_hosts=True) == "scheme_not_allowed:ftp"


@pytest.mark.parametrize("url", ["http://0x7f.1/", "http://0177.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://localhost./"])
def test_obfuscated_loopback_is_blocked(url):
    assert check_url(url, allow_private_hosts=False).startswith("private_host")


def test_image_rules():
    cfg = FilterConfig(min_side=64, max_aspect_ratio=3.0)
    assert image_reject(100, 100, cfg) is None
    assert image_reject(63, 500, cfg) == "image_too_small:64"
    assert image_reject(400, 100, cfg) == "aspect_ratio_above:3"
    assert image_reject(None, None, cfg) is None


@pytest.mark.parametrize(
    "caption,kind",
    [
        ("IMG_1234.JPG", "file_name"),
        ("DSC00042", "file_name"),
        ("holiday-photo_2.jpeg", "file_name"),
        ("https://example.com/img/1.jpg", "url"),
        ("Click here", "boilerplate"),
        ("buy now 50% off", "boilerplate"),
        ("untitled", "boilerplate"),
        ("#### 1234 ####", "mostly_symbols"),
        ("a dog running on the beach", None),
        ("photo of a red image on the wall", None),
    ],
)
def test_junk_kinds(caption, kind):
    assert junk_kind(caption) == kind


def test_caption_rules_order_and_codes():
    cfg = FilterConfig(min_caption_words=2, max_caption_words=5)
    assert caption_reject(None, False, cfg) == "caption_empty"
    assert caption_reject("  \t ", False, cfg) == "caption_empty"
    assert caption_reject("a dog", True, cfg) == "caption_bad_encoding"
    assert caption_reject("dog", False, cfg) == "caption_too_short:2"
    assert caption_reject("one two three four five six", False, cfg) == "caption_too_long:5"
    assert caption_reject("IMG_1.jpg", False, cfg) == "caption_junk:file_name"
    assert caption_reject("a brown dog", False, cfg) is None
    assert caption_reject("IMG_1.jpg", False, FilterConfig(junk_captions=False, min_caption_words=1)) is None


@pytest.mark.parametrize(
    "status,message,expected",
    [
        ("success", None, None),
        ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
        ("failed_to_download", "HTTP Error 301: The HTTP server returned a redirect error that would lead to an infinite loop.", "too_many_redirects"),
        ("failed_to_download", "The read operation timed out", "timeout"),
        ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection_error"),
        ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", "opted_out"),
        ("failed_to_resize", "Image decoding error", "not_an_image"),
        ("failed_to_download", "something odd: happened", "download_error:something_odd_happened"),
    ],
)
def test_download_reason_mapping(status, message, expected):
    assert download_reason(status, message) == expected


def test_caption_char_cap_is_checked_first():
    cfg = FilterConfig(max_caption_chars=10)
    assert caption_reject("x" * 11, False, cfg) == "caption_too_long:10_chars"
    assert caption_reject("IMG_1.jpg" + " " * 5, False, cfg) == "caption_too_long:10_chars"
    assert caption_reject("a red dog", False, cfg) is None


@pytest.mark.parametrize(
    "verdict", ["private_host:127.0.0.2", "redirect_to_private_host:169.254.169.254", "body_too_large:1024",
                "not_an_image:empty_body", "private_host:[::1]"],
)
def test_a_verified_verdict_is_the_reason_whatever_the_message(verdict):
    """The worker's verified verdict (safe_downloader's fetch_reason column) decides."""
    assert download_reason("failed_to_download", "HTTP Error 404: Not Found", verdict) == verdict


@pytest.mark.parametrize(
    "message",
    ["<urlopen error curate-refused private_host:127.0.0.2>", "curate-refused redirect_to_private_host:169.254.169.254",
     "curate-verdict private_host:169.254.169.254 #" + "0" * 32, "HTTP/1.1 2xx curate-refused private_host:10.0.0.1 [/bold]"],
)
def test_verdict_text_in_a_message_is_never_a_verdict(message):
    """Text a server can put in the message never makes a row blocked, and reaches the
    reason only reduced to a safe detail."""
    got = download_reason("failed_to_download", message)
    assert got.split(":")[0] in ("download_error", "connection_error"), got
    assert re.fullmatch(r"[a-z_]+(:[A-Za-z0-9._+-]+)?", got), got


def test_img2dataset_messages_still_map():
    assert download_reason("failed_to_resize", "image area too large") == "image_too_large"


def test_allowed_networks_open_literal_addresses_and_localhost():
    assert check_url("http://127.0.0.1:8/a.jpg", False, ("127.0.0.0/8",)) is None
    assert check_url("http://localhost:8/a.jpg", False, ("127.0.0.1/32",)) is None
    assert check_url("http://10.0.0.8/a.jpg", False, ("127.0.0.1/32",)) == "private_host:10.0.0.8"
