"""`curate retry RUN` from the command line, on a real server that fails some URLs at first:
only the failed rows are fetched again, the run is decided again (dedupe included), the
manifest keeps one row per input row with its attempts, the summary says what each retry
recovered, and output shards whose content did not change are not rewritten. A URL that
stalls forever ends at its shard's deadline (`shard_timeout`), the run finishes, and the
retry fetches it."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from corpus import image_bytes
from curate.synth.http_server import CorpusServer, Route
from e2e import cli_environment, curate_cli, file_states, read_manifest

GOOD = [f"/ok/{i}.jpg" for i in range(6)]
# Served after the good images, so that their samples come last and the first output shards
# hold only rows that never failed.
FLAKY = ["/flaky-1.jpg", "/flaky-2.jpg", "/flaky-copy.jpg"]  # 503 at first; the copy has /ok/0.jpg's bytes
STALL = "/stall.jpg"  # never answers its first request
MISSING = "/missing.jpg"  # 404: not transient, never fetched again by default


def _routes() -> dict[str, Route]:
    routes = {path: Route(image_bytes("JPEG", seed=i)) for i, path in enumerate(GOOD)}
    routes["/flaky-1.jpg"] = Route(image_bytes("JPEG", seed=21), fail_first=1, fail_status=503)
    routes["/flaky-2.jpg"] = Route(image_bytes("JPEG", seed=22), fail_first=1, fail_status=500)
    routes["/flaky-copy.jpg"] = Route(image_bytes("JPEG", seed=0), fail_first=1, fail_status=503)
    routes[STALL] = Route(image_bytes("JPEG", seed=23), stall_first=1)
    return routes


@pytest.fixture(scope="module")
def cli_env_module() -> dict:
    return cli_environment()


@pytest.fixture(scope="module")
def retried(tmp_path_factory, cli_env_module):
    """A run, then `curate retry` with the default reasons, then `curate retry --reasons
    http_404`, then `curate retry` with nothing left: the state after each."""
    tmp = tmp_path_factory.mktemp("retry")
    env = cli_env_module
    with CorpusServer(_routes()) as server:
        paths = GOOD + FLAKY + [MISSING]
        folder = tmp / "in"
        folder.mkdir()
        # The stalling URL in a file of its own: its download shard is the one that times out.
        pq.write_table(pa.Table.from_pylist([{"url": server.url(p), "caption": f"a photo of the thing at {p}"}
                                             for p in paths]), folder / "a.parquet")
        pq.write_table(pa.Table.from_pylist([{"url": server.url(STALL), "caption": "a photo that stalls"}]),
                       folder / "b.parquet")
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump({
            "input": {"path": str(folder), "format": "parquet"},
            "output": {"path": "unused", "samples_per_shard": 3},
            "download": {"timeout": 60, "shard_timeout": 20, "allow_private_hosts": True, "image_size": 64,
                         "threads": 4, "shard_size": 4},
            "filters": {"min_side": 32},
            "report": {"enabled": False},
            "ray": {"num_cpus": 2},
        }))
        run = tmp / "run"
        states = {}
        curate_cli(["run", str(config), "--out", str(run)], env)
        states["run"] = (read_manifest(str(run)), file_states(run / "output"), len(server.requests))
        done = curate_cli(["retry", str(run)], env)
        states["retry"] = (read_manifest(str(run)), file_states(run / "output"), list(server.requests), done.stdout,
                           json.loads((run / "summary.json").read_text()))
        done = curate_cli(["retry", str(run), "--reasons", "http_404"], env)
        states["retry_404"] = (read_manifest(str(run)), json.loads((run / "summary.json").read_text()))
        states["nothing"] = curate_cli(["retry", str(run)], env).stdout
        states["bad_reason"] = curate_cli(["retry", str(run), "--reasons", "not_a_code"], env, ok=False)
        # The server fails nothing now (its first requests are spent): a run where nothing failed.
        curate_cli(["run", str(config), "--out", str(tmp / "fresh")], env)
        states["fresh"] = (read_manifest(str(tmp / "fresh")), file_states(tmp / "fresh" / "output"))
        states["retried_output"] = file_states(run / "output")
        yield server, states


def _by_path(manifest) -> dict[str, dict]:
    return {"/" + m["url"].split("/", 3)[3]: m for m in manifest.to_pylist()}


def test_the_first_run_records_transient_failures_and_the_stall_ends_at_its_shard_deadline(retried):
    _, states = retried
    rows = _by_path(states["run"][0])
    assert {p: (rows[p]["status"], rows[p]["reason"]) for p in FLAKY + [STALL, MISSING]} == {
        "/flaky-1.jpg": ("download_failed", "http_503"), "/flaky-2.jpg": ("download_failed", "http_500"),
        "/flaky-copy.jpg": ("download_failed", "http_503"), STALL: ("download_failed", "shard_timeout"),
        MISSING: ("download_failed", "http_404"),
    }
    assert all(rows[p]["status"] == "kept" and rows[p]["attempts"] == 1 for p in GOOD)


def test_retry_fetches_only_the_failed_rows_and_recovers_them(retried):
    server, states = retried
    requests_before = states["run"][2]
    again = states["retry"][2][requests_before:]
    assert sorted(again) == sorted(FLAKY + [STALL])  # not the good ones, not the 404
    rows = _by_path(states["retry"][0])
    assert len(rows) == len(GOOD) + len(FLAKY) + 2
    for path in ("/flaky-1.jpg", "/flaky-2.jpg", STALL):
        assert (rows[path]["status"], rows[path]["attempts"]) == ("kept", 2), rows[path]
        assert rows[path]["download_shard"].startswith("retry-01/")
    # dedupe ran again over the recovered images: the copy duplicates an image kept before
    assert rows["/flaky-copy.jpg"]["status"] == "duplicate"
    assert rows["/flaky-copy.jpg"]["reason"] == f"duplicate_of:{rows['/ok/0.jpg']['sample_id']}"
    assert (rows[MISSING]["reason"], rows[MISSING]["attempts"]) == ("http_404", 1)
    assert all(rows[p]["attempts"] == 1 and rows[p]["download_shard"] == rows_before["download_shard"]
               for p, rows_before in ((p, _by_path(states["run"][0])[p]) for p in GOOD))


def test_the_summary_says_what_the_retry_recovered(retried):
    _, states = retried
    stdout, summary = states["retry"][3], states["retry"][4]
    assert summary["retries"] == [{
        "pass": 1, "reasons": ["timeout", "connection_error", "http_429", "http_5xx", "shard_timeout"], "retried": 4,
        "recovered": 4, "statuses": {"kept": 3, "duplicate": 1}, "still_failed": [],
    }]
    assert "fetched 4 rows again, 4 recovered; now kept 3, duplicate 1; still failed: none" in " ".join(stdout.split())
    assert summary["statuses"] == {"kept": 9, "duplicate": 1, "download_failed": 1}


def test_output_shards_whose_content_did_not_change_are_not_rewritten(retried):
    _, states = retried
    before, after = states["run"][1], states["retry"][1]
    for name in ("00000.tar", "00000.parquet", "00000_stats.json", "00001.tar", "00001.parquet"):
        assert after[name] == before[name], f"{name} was rewritten"  # same mtime, same bytes
    assert "00002.tar" in after and "00002.tar" not in before
    index = json.loads(after["index.json"][1])
    assert index["total"] == 9 and [s["count"] for s in index["shards"]] == [3, 3, 3]


def test_retry_by_reason_counts_attempts_and_what_still_failed(retried):
    _, states = retried
    manifest, summary = states["retry_404"]
    rows = _by_path(manifest)
    assert (rows[MISSING]["status"], rows[MISSING]["reason"], rows[MISSING]["attempts"]) == (
        "download_failed", "http_404", 2)
    assert rows["/flaky-1.jpg"]["attempts"] == 2  # retry 2 did not fetch it
    assert summary["retries"][1] == {"pass": 2, "reasons": ["http_404"], "retried": 1, "recovered": 0,
                                     "statuses": {"download_failed": 1},
                                     "still_failed": [{"reason": "http_404", "count": 1}]}
    assert summary["retries"][0]["recovered"] == 4  # the first pass's figures stay as recorded


def test_nothing_to_retry_and_a_bad_reason_are_told_plainly(retried):
    _, states = retried
    assert "nothing to retry" in " ".join(states["nothing"].split())
    bad = states["bad_reason"]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "not_a_code" in bad.stderr and "http_5xx" in bad.stderr


def test_a_retry_that_recovered_everything_equals_a_run_where_nothing_failed(retried):
    _, states = retried
    where = ["attempts", "download_shard", "download_key"]  # how the bytes were got, not what they are
    fresh, retried_manifest = states["fresh"][0], states["retry_404"][0]
    assert retried_manifest.drop_columns(where).equals(fresh.drop_columns(where))
    fresh_files, retried_files = states["fresh"][1], states["retried_output"]
    shards = [n for n in fresh_files if n.endswith(".parquet")]
    assert sorted(shards) == sorted(n for n in retried_files if n.endswith(".parquet")) and shards
    for name in shards:
        read = lambda files: pq.read_table(pa.BufferReader(files[name][1]))  # noqa: E731
        assert read(retried_files).equals(read(fresh_files)), name


# -- rows merged by URL: the sample is retried, the rows merged into it are not ---------------


@pytest.fixture(scope="module")
def retried_same_url(tmp_path_factory, cli_env_module):
    """Two rows of one URL that fails at first (one sample with an alternate) and a good one:
    a run, then `curate retry`."""
    tmp = tmp_path_factory.mktemp("retry-same-url")
    routes = {"/ok.jpg": Route(image_bytes("JPEG", seed=31)),
              "/flaky.jpg": Route(image_bytes("JPEG", seed=32), fail_first=1, fail_status=503)}
    with CorpusServer(routes) as server:
        folder = tmp / "in"
        folder.mkdir()
        rows = [("/flaky.jpg", "a photo of the flaky thing"), ("/ok.jpg", "a photo of the good thing"),
                ("/flaky.jpg", "another photo of the flaky thing")]
        pq.write_table(pa.Table.from_pylist([{"url": server.url(p), "caption": c} for p, c in rows]),
                       folder / "a.parquet")
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump({
            "input": {"path": str(folder), "format": "parquet"}, "output": {"path": "unused"},
            "download": {"allow_private_hosts": True, "image_size": 64, "threads": 2},
            "filters": {"min_side": 32}, "report": {"enabled": False}, "ray": {"num_cpus": 2},
        }))
        run = tmp / "run"
        curate_cli(["run", str(config), "--out", str(run)], cli_env_module)
        before = (read_manifest(str(run)), len(server.requests))
        curate_cli(["retry", str(run)], cli_env_module)
        select = json.loads((run / "_done" / "retry-01-select").read_text())
        yield before, (read_manifest(str(run)), list(server.requests)), select


def test_a_retry_fetches_the_sample_again_with_its_alternates_never_the_rows_merged_into_it(retried_same_url):
    (manifest, requests_before), (after, requests), select = retried_same_url
    flaky, merged = "00000-0000000000", "00000-0000000002"
    first = {m["sample_id"]: m for m in manifest.to_pylist()}
    assert (first[flaky]["status"], first[flaky]["reason"]) == ("download_failed", "http_503")
    assert (first[merged]["status"], first[merged]["reason"], first[merged]["attempts"]) == (
        "duplicate", f"same_url_as:{flaky}", 0)  # never fetched
    assert select["rows"] == 1 and requests[requests_before:] == ["/flaky.jpg"]
    rows = {m["sample_id"]: m for m in after.to_pylist()}
    assert (rows[flaky]["status"], rows[flaky]["attempts"]) == ("kept", 2)
    assert [(c["text"], c["source"], c["kept"]) for c in rows[flaky]["captions"]] == [
        ("a photo of the flaky thing", "original", True), ("another photo of the flaky thing", "alternate", True)]
    assert (rows[merged]["status"], rows[merged]["reason"], rows[merged]["attempts"]) == (
        "duplicate", f"same_url_as:{flaky}", 0)
