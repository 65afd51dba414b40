import pytest

from corpus import blocked_rows
from curate.stages.cheap_filters import junk_kind
from curate.download.download import download_reason
from curate.stages.inspect import InspectStage
from curate.download.precheck import check_url
from stage_helpers import caption_reasons, config, reasons


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
    rules = InspectStage(config("filters.min_side=64", "filters.max_aspect_ratio=3.0")).rules()
    sizes = [(100, 100), (63, 500), (400, 100), (None, None), (0, 500), (300, 100)]
    rows = [{"original_width": w, "original_height": h} for w, h in sizes]
    # missing or zero sizes pass (no evidence); exactly 3:1 passes
    assert reasons(rules, rows) == [None, "image_too_small:64", "aspect_ratio_above:3", None, None, None]


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
    cfg = config("filters.min_caption_words=2", "filters.max_caption_words=5")
    captions = [None, "  \t ", "a dog", "dog", "one two three four five six", "IMG_1.jpg", "a brown dog"]
    assert caption_reasons(cfg, captions, [False, False, True, False, False, False, False]) == [
        "caption_empty", "caption_empty", "caption_bad_encoding", "caption_too_short:2", "caption_too_long:5",
        "caption_junk:file_name", None]
    lenient = config("filters.junk_captions=false", "filters.min_caption_words=1")
    assert caption_reasons(lenient, ["IMG_1.jpg"]) == [None]


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
        ("failed_to_download", "something odd: happened", "download_error"),  # never the message
    ],
)
def test_download_reason_mapping(status, message, expected):
    assert download_reason(status, message) == expected


def test_caption_char_cap_is_checked_first():
    cfg = config("filters.max_caption_chars=10")
    assert caption_reasons(cfg, ["x" * 11, "IMG_1.jpg" + " " * 5, "a red dog"]) == [
        "caption_too_long:10_chars", "caption_too_long:10_chars", None]


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
    """Text a server can put in the message never makes a row blocked, and never reaches
    the reason."""
    got = download_reason("failed_to_download", message)
    assert got in ("download_error", "connection_error"), got


def test_img2dataset_messages_still_map():
    assert download_reason("failed_to_resize", "image area too large") == "image_too_large"


def test_allowed_networks_open_literal_addresses_and_localhost():
    assert check_url("http://127.0.0.1:8/a.jpg", False, ("127.0.0.0/8",)) is None
    assert check_url("http://localhost:8/a.jpg", False, ("127.0.0.1/32",)) is None
    assert check_url("http://10.0.0.8/a.jpg", False, ("127.0.0.1/32",)) == "private_host:10.0.0.8"
