"""A server can't choose its own verdict, and can't hold a fetch by trickling its headers:
real answers from a raw socket server on 127.0.0.1, through the opener the download
workers use, and through img2dataset's own fetch function and shard writer."""

from __future__ import annotations

import io
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.download.download import download_reason
from curate.download.precheck import AddressPolicy
from curate.download.safe_downloader import FETCH_REASON, VerdictWriter
from curate.download.safe_fetch import MARK, FetchPolicy, FetchRefused, FetchVerdict, build_opener, install, verified_reason
from raw_http import FAKE_TAG, RawServer, forged_routes

POLICY = FetchPolicy(addresses=AddressPolicy(False, ("127.0.0.1/32",)), max_fetch_seconds=2.0)
WANT = {
    "/forged-status": "bad_http_response",
    "/forged-verdict": "bad_http_response",
    "/forged-phrase": "http_404",
    "/trickle-headers": "timeout:max_fetch_seconds",
}


@pytest.fixture(scope="module")
def server():
    raw = RawServer(forged_routes())
    yield raw
    raw.close()


@pytest.mark.parametrize("path", sorted(WANT))
def test_a_server_answer_gets_the_verdict_of_its_type(server, path):
    """A forged status line is a malformed answer, a forged reason phrase a 404; headers
    trickled one byte per 0.1 s end at max_fetch_seconds, not at download.timeout (10 s
    per read here, so a trickle would otherwise never end)."""
    with pytest.raises(FetchVerdict) as caught:
        with build_opener(POLICY).open(urllib.request.Request(server.url(path)), timeout=10) as response:
            response.read()
    assert caught.value.reason == WANT[path]
    assert verified_reason(str(caught.value)) == WANT[path]


def test_only_this_process_can_sign_a_verdict():
    genuine = FetchRefused("private_host", "10.0.0.8")
    assert verified_reason(f"<urlopen error {genuine}>") == "private_host:10.0.0.8"
    reason_text, tag = str(genuine).split(" ")[1:]
    for forged in (f"{MARK} private_host:169.254.169.254 #{FAKE_TAG}",  # a guessed tag
                   f"{MARK} private_host:169.254.169.254 {tag}",  # a real tag for another reason
                   "curate-refused private_host:169.254.169.254",  # the old marker
                   f"HTTP Error 404: {MARK} {reason_text}"):  # the reason without its tag
        assert verified_reason(forged) is None, forged


def test_img2dataset_records_the_verified_verdict_not_the_servers_text(server, tmp_path):
    """img2dataset's own download_image (it keeps str(error)) with our opener installed,
    then the shard writer the SafeDownloader wraps: the fetch_reason column holds the
    verdict, and the manifest reason comes from it."""
    from img2dataset.downloader import download_image
    from img2dataset.writer import ParquetSampleWriter

    install(POLICY)
    schema = pa.schema([("key", pa.string()), ("status", pa.string()), ("error_message", pa.string())])
    writer = VerdictWriter(ParquetSampleWriter, 0, str(tmp_path), False, 5, schema, "jpg")
    for i, path in enumerate(sorted(WANT)):
        _, stream, message = download_image((i, server.url(path)), 10, None, None)
        assert stream is None and message
        writer.write(None, f"{i:05d}", None, {"key": f"{i:05d}", "status": "failed_to_download", "error_message": message})
    writer.close()
    rows = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    got = [download_reason(r["status"], r["error_message"], r[FETCH_REASON]) for r in rows]
    assert got == [WANT[p] for p in sorted(WANT)]
    assert not any(g.startswith(("private_host", "redirect_to_private_host")) for g in got)


def test_a_trickled_body_still_ends_at_the_deadline():
    """The deadline covers the body as before (now enforced by the same reader)."""
    from raw_http import Raw

    trickle = RawServer({"/body": Raw(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\n", trickle=b"\xff")})
    try:
        with pytest.raises(FetchVerdict) as caught:
            with build_opener(POLICY).open(trickle.url("/body"), timeout=10) as response:
                io.BytesIO(response.read())
        assert caught.value.reason == "timeout:max_fetch_seconds"
    finally:
        trickle.close()
