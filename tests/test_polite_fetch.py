"""Polite fetching and deadlines (curate.download.polite_fetch, host_gate, fetch_deadline):
a row's fetch through img2dataset's own download_image, in this process against a real
server on 127.0.0.1, and a whole run whose download shards share one host gate.

No timing thresholds: the deadlines are asserted by the reason a fetch ends with (a socket
timeout would give another one, much later), and Retry-After by the server never seeing a
request sooner than the answer said."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import image_bytes
from curate.core.config import load_config
from curate.core.views import run_query
from curate.pipeline.runner import run_pipeline
from curate.download import safe_fetch
from curate.download.download_errors import download_reason
from curate.download.fetch_deadline import parse_retry_after
from curate.download.host_gate import POLL_SECONDS, HostSchedule
from curate.download.polite_fetch import FetchSettings, ShardFetches
from curate.download.precheck import AddressPolicy
from curate.download.safe_fetch import FetchPolicy, verified_reason
from curate.synth.http_server import CorpusServer, Route
from e2e import read_manifest

# Retry-After values no delay-seconds or HTTP-date can be read from: Latin-1 digits that
# str.isdigit() accepts and float() refuses (issue 31, item 8) and their neighbours.
ODD_RETRY_AFTER = ("\u00b2", "\u00b3", "\u00b9", "1\u00bd", "\u00b2\u00b2", "1.5", "-1", "0x10", "1e3", "\u00a0 2", "")

JPEG = image_bytes("JPEG", seed=3)


# -- the host schedule, on a clock the test moves ----------------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_reserves_start_slots_one_interval_apart():
    clock = Clock()
    gate = HostSchedule(per_host_rps=2, clock=clock)
    assert [gate.acquire("a.test", 60) for _ in range(3)] == [(True, 0.0), (True, 0.5), (True, 1.0)]
    assert gate.acquire("b.test", 60) == (True, 0.0)  # per host
    assert gate.acquire("a.test", 1.0) == (False, None)  # its slot (1.5 s away) is past the caller's limit


def test_concurrency_limit_makes_callers_ask_again_until_a_release():
    gate = HostSchedule(max_per_host=1, clock=Clock())
    assert gate.acquire("a.test", 60) == (True, 0.0)
    assert gate.acquire("a.test", 60) == (False, POLL_SECONDS)
    assert gate.acquire("b.test", 60) == (True, 0.0)
    gate.release("a.test")
    assert gate.acquire("a.test", 60) == (True, 0.0)


def test_a_retry_after_pause_holds_every_start_to_the_host():
    clock = Clock()
    gate = HostSchedule(clock=clock)
    gate.pause("a.test", 3.0)
    assert gate.acquire("a.test", 60) == (True, 3.0)
    assert gate.acquire("a.test", 2.0) == (False, None)
    clock.now += 3.0
    assert gate.acquire("a.test", 60) == (True, 0.0)


def test_idle_hosts_are_forgotten_once_many_are_remembered(monkeypatch):
    from curate.download import host_gate

    monkeypatch.setattr(host_gate, "MAX_HOSTS", 2)
    clock = Clock()
    gate = HostSchedule(clock=clock)
    gate.acquire("a.test", 60)
    gate.acquire("b.test", 60)
    gate.release("a.test")  # b.test still has a request in flight
    gate.acquire("c.test", 60)
    assert sorted(gate.hosts) == ["b.test", "c.test"]


@pytest.mark.parametrize("value", ODD_RETRY_AFTER + ("\u0661\u0662", "\uff11", "\u09e8", "Wed, 21 Oct 2015 07:28:10 G\u00b2T",
                                                  "Wed, 99 Oct 99999999 07:28:10 GMT"))
def test_retry_after_is_read_as_ascii_only_and_never_raises(value):
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("i", range(len(ODD_RETRY_AFTER)))
def test_an_unreadable_retry_after_never_changes_a_rows_verdict(server, opener, i):
    """A 429 with it is a 429 (not invalid_request); a 200 with it is an image (not download_failed)."""
    shard = ShardFetches(FetchSettings(max_retry_after=10.0))
    assert _fetch(shard, server.url(f"/ra-odd-{i}.jpg"))[2] == "http_429"
    stream, error, reason = _fetch(shard, server.url(f"/ok-odd-{i}.jpg"))
    assert stream is not None and error is None and reason is None


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0 and parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# -- one row's fetch, in this process -----------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    routes = {
        "/ok.jpg": Route(JPEG),
        "/stall.jpg": Route(stall=True),
        "/ra.jpg": Route(JPEG, fail_first=1, fail_status=429, fail_headers=(("Retry-After", "1"),)),
        "/ra-503.jpg": Route(JPEG, fail_first=1, fail_status=503, fail_headers=(("Retry-After", "1"),)),
        "/ra-long.jpg": Route(JPEG, fail_first=1, fail_status=429, fail_headers=(("Retry-After", "1000"),)),
        "/flaky.jpg": Route(JPEG, fail_first=1, fail_status=502),
        # Latin-1 digits that str.isdigit() accepts and float() refuses (issue 31, item 8)
        **{f"/ra-odd-{i}.jpg": Route(JPEG, fail_first=1, fail_status=429, fail_headers=(("Retry-After", v),))
           for i, v in enumerate(ODD_RETRY_AFTER)},
        **{f"/ok-odd-{i}.jpg": Route(JPEG, headers=(("Retry-After", v),)) for i, v in enumerate(ODD_RETRY_AFTER)},
    }
    with CorpusServer(routes) as served:
        yield served


@pytest.fixture
def opener():
    """img2dataset's download_image fetches through urllib's process-wide opener: ours, as in
    a download worker, for the length of a test."""
    safe_fetch.install(FetchPolicy(addresses=AddressPolicy(False, ("127.0.0.1/32",))))
    yield
    urllib.request.install_opener(None)
    safe_fetch._installed.clear()


def _fetch(shard: ShardFetches, url: str, retries: int = 0):
    key, stream, error = shard.fetch((0, url), 30, retries, "curate", None)
    return stream, error, download_reason("success" if stream else "failed_to_download", error, verified_reason(error))


def _requests(server, path: str) -> list[float]:
    return [t for t, target in server.log if target == path]


def test_a_stalled_server_ends_at_the_shard_deadline_and_later_rows_are_not_fetched(server, opener):
    shard = ShardFetches(FetchSettings(shard_timeout=1.0, max_fetch_seconds=60.0))
    # download.timeout is 30 s per read: only the shard's deadline can end this within the test
    assert _fetch(shard, server.url("/stall.jpg"))[2] == "shard_timeout"
    before = len(server.log)
    assert _fetch(shard, server.url("/ok.jpg"))[2] == "shard_timeout"  # the shard's time is up
    assert len(server.log) == before, "a row was fetched after its shard's deadline"
    figures = shard.figures.table().to_pylist()[0]
    assert (figures["requests"], figures["failed"], figures["shard_timeout"]) == (1, 2, 2)


def test_a_stalled_request_ends_at_max_fetch_seconds(server, opener):
    shard = ShardFetches(FetchSettings(shard_timeout=600.0, max_fetch_seconds=1.0))
    # download.timeout is 30 s per read: only the request's deadline can end this within the test
    assert _fetch(shard, server.url("/stall.jpg"))[2] == "timeout:max_fetch_seconds"


@pytest.mark.parametrize("path", ["/ra.jpg", "/ra-503.jpg"])
def test_retry_after_delays_the_row_instead_of_failing_it(server, opener, path):
    shard = ShardFetches(FetchSettings(max_retry_after=10.0))
    stream, error, reason = _fetch(shard, server.url(path))
    assert stream is not None and error is None and reason is None
    first, second = _requests(server, path)
    assert second - first >= 1.0, "asked again sooner than Retry-After said"
    figures = shard.figures.table().to_pylist()[0]
    assert (figures["requests"], figures["fetched"], figures["retry_after_waits"]) == (2, 1, 1)


def test_a_retry_after_beyond_max_retry_after_fails_the_row_with_its_status(server, opener):
    shard = ShardFetches(FetchSettings(max_retry_after=10.0))
    assert _fetch(shard, server.url("/ra-long.jpg"))[2] == "http_429"
    assert len(_requests(server, "/ra-long.jpg")) == 1


def test_retries_repeat_transient_failures_only(server, opener):
    shard = ShardFetches(FetchSettings())
    stream, _, _ = _fetch(shard, server.url("/flaky.jpg"), retries=1)
    assert stream is not None and len(_requests(server, "/flaky.jpg")) == 2
    assert _fetch(shard, server.url("/missing.jpg"), retries=3)[2] == "http_404"
    assert len(_requests(server, "/missing.jpg")) == 1, "a 404 is not asked again"


# -- a run: every download shard shares the host gate --------------------------------------------


@pytest.fixture(scope="module")
def polite_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("polite")
    routes = {f"/paced/{i}.jpg": Route(image_bytes("JPEG", seed=10 + i), delay=0.2) for i in range(8)}
    routes["/ra.jpg"] = Route(image_bytes("JPEG", seed=30), fail_first=1, fail_status=429,
                              fail_headers=(("Retry-After", "2"),))
    routes["/ra-long.jpg"] = Route(image_bytes("JPEG", seed=31), fail_first=1, fail_status=429,
                                   fail_headers=(("Retry-After", "1000"),))
    with CorpusServer(routes) as server:
        port = server.base_url.rsplit(":", 1)[1]
        rows = [{"url": f"http://paced.test:{port}/paced/{i}.jpg", "caption": f"a photo of paced thing {i}"}
                for i in range(8)]
        rows += [{"url": f"http://limited.test:{port}{p}", "caption": f"a photo of limited thing {p}"}
                 for p in ("/ra.jpg", "/ra-long.jpg")]
        pq.write_table(pa.Table.from_pylist(rows), tmp / "in.parquet")
        overrides = [f"input.path={tmp / 'in.parquet'}", "download.allowed_networks=[127.0.0.1/32]",
                     "download.resolve={paced.test: 127.0.0.1, limited.test: 127.0.0.1}",
                     "download.max_per_host=1", "download.per_host_rps=5", "download.max_retry_after=10",
                     "download.threads=4", "download.shard_size=3", "download.image_size=64",
                     "filters.min_side=32", "report.enabled=false"]
        cfg = load_config(None, overrides, out=str(tmp / "run"))
        run_pipeline(cfg)
        yield server, str(tmp / "run"), port


def test_no_host_ever_had_more_requests_in_flight_than_max_per_host(polite_run):
    server, _, port = polite_run
    # paced.test's 8 rows are in 3 download shards, running at once in Ray tasks
    assert server.max_in_flight["paced.test"] == 1
    assert len([p for _, p in server.log if p.startswith("/paced/")]) == 8


def test_retry_after_is_honoured_across_the_run_and_the_row_is_kept(polite_run):
    server, run_root, _ = polite_run
    first, second = _requests(server, "/ra.jpg")
    assert second - first >= 2.0, "asked again sooner than Retry-After said"
    by_url = {m["url"].rsplit("/", 1)[-1]: m for m in read_manifest(run_root).to_pylist()}
    assert (by_url["ra.jpg"]["status"], by_url["ra.jpg"]["attempts"]) == ("kept", 1)
    assert (by_url["ra-long.jpg"]["status"], by_url["ra-long.jpg"]["reason"]) == ("download_failed", "http_429")
    assert all(by_url[f"{i}.jpg"]["status"] == "kept" for i in range(8))


def test_stats_show_the_figures_per_host(polite_run, cli_env):
    _, run_root, _ = polite_run
    hosts = {r["host"]: r for r in run_query(run_root, "SELECT * FROM hosts").to_pylist()}
    assert (hosts["paced.test"]["requests"], hosts["paced.test"]["fetched"]) == (8, 8)
    assert hosts["paced.test"]["waited_seconds"] > 0  # one at a time, five a second
    limited = hosts["limited.test"]
    assert (limited["requests"], limited["http_429"], limited["retry_after_waits"], limited["failed"]) == (3, 2, 1, 1)
    done = subprocess.run(["curate", "stats", run_root, "--format", "json"], env=cli_env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shown = {r["host"]: r for r in json.loads(done.stdout)["hosts"]}
    assert shown["limited.test"]["http_429"] == 2 and shown["paced.test"]["requests"] == 8
