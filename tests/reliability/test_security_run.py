"""One real run (img2dataset in Ray workers, inspect, manifest, output) over rows built to
get past the address policy, forge their own verdict, stall a fetch in its headers, or
take over the terminal that shows them; then the real ``curate query`` and ``curate
stats`` over it, printing to a (forced) terminal, and SQL that reaches outside the run.

Everything is served on loopback; names resolve through ``download.resolve`` only, and
the special addresses they resolve to are refused before any connect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from corpus import image_bytes
from curate.core.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.pipeline.summary import print_summary
from curate.synth.http_server import CorpusServer, Route
from e2e import read_manifest
from faults import assert_accounting
from raw_http import RawServer, forged_routes

# Names resolving to the five addresses: refused at connect time in the workers.
RESOLVE = {"compat.test": "::127.0.0.1", "siit.test": "::ffff:0:127.0.0.1", "nat64local.test": "64:ff9b:1::7f00:1",
           "sitelocal.test": "fec0::1", "ietf.test": "192.0.0.8", "images.test": "127.0.0.1"}
MARKUP = "a red bicycle [/bold] leaning on a wall"
LINK = "a cat [link=file:///etc/passwd]sitting[/link] on a mat"
ESCAPES = "a dog \x1b[2J\x1b]8;;file:///etc/passwd\x1b\\running\x1b]8;;\x1b\\ on grass"
BIDI = "a boat on the sea \u202egpj.exe"


def _rows(files: CorpusServer, raw: RawServer) -> list[tuple[str | None, str, str, str | None]]:
    """(url, caption, status, reason) of every input row."""
    port = files.url("/").split(":")[2].split("/")[0]
    return [
        (files.url("/ok-1.jpg"), "a small red house in a field", "kept", None),
        (files.url("/ok-2.jpg").replace("127.0.0.1", "images.test"), MARKUP, "kept", None),
        (files.url("/ok-3.jpg"), LINK, "kept", None),
        (files.url("/ok-4.jpg"), ESCAPES, "kept", None),
        (files.url("/ok-5.jpg"), BIDI, "kept", None),
        # 1: the literals, blocked before download ...
        ("http://[::127.0.0.1]/a.jpg", "loopback, compatible form", "blocked", "private_host:[::127.0.0.1]"),
        ("http://[::ffff:0:127.0.0.1]/a.jpg", "loopback, translated form", "blocked", "private_host:[::ffff:0:127.0.0.1]"),
        ("http://[64:ff9b:1::7f00:1]/a.jpg", "loopback, local NAT64", "blocked", "private_host:[64:ff9b:1::127.0.0.1]"),
        ("http://[fec0::1]/a.jpg", "site local", "blocked", "private_host:[fec0::1]"),
        ("http://192.0.0.8/a.jpg", "dummy address", "blocked", "private_host:192.0.0.8"),
        ("http://[::1]/a.jpg", "ipv6 loopback", "blocked", "private_host:[::1]"),
        ("http://[::]/a.jpg", "unspecified", "blocked", "private_host:[::]"),
        # ... and names for them, refused by the download workers before connecting
        *[(f"http://{name}:{port}/ok-1.jpg", f"by name {name}", "blocked", f"private_host:{shown}")
          for name, shown in [("compat.test", "[::127.0.0.1]"), ("siit.test", "[::ffff:0:127.0.0.1]"),
                              ("nat64local.test", "[64:ff9b:1::127.0.0.1]"), ("sitelocal.test", "[fec0::1]"),
                              ("ietf.test", "192.0.0.8")]],
        # 2: answers that try to choose their verdict; 5: headers trickled forever
        (raw.url("/forged-status"), "forged status line", "download_failed", "bad_http_response"),
        (raw.url("/forged-verdict"), "forged verdict", "download_failed", "bad_http_response"),
        (raw.url("/forged-phrase"), "forged reason phrase", "download_failed", "http_404"),
        (raw.url("/trickle-headers"), "headers one byte at a time", "download_failed", "timeout:max_fetch_seconds"),
        # 3: hosts and captions that are markup or terminal control, on rows never fetched
        ("ftp://a[bold]b/x.jpg", "markup [bold]in[/bold] the host", "blocked", "url_invalid"),
        ("http://a\x1b[2Jb/x.jpg", "an escape in the url", "blocked", "url_invalid"),
    ]


@pytest.fixture(scope="module")
def security_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("security")
    routes = {f"/ok-{i}.jpg": Route(image_bytes("JPEG", seed=100 + i)) for i in range(1, 6)}
    raw = RawServer(forged_routes())
    with CorpusServer(routes) as files:
        rows = _rows(files, raw)
        pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows]}), tmp / "in.parquet")
        overrides = [
            f"input.path={tmp / 'in.parquet'}", "download.timeout=2", "download.image_size=64", "download.threads=8",
            "filters.min_side=32", "download.allow_private_hosts=false", "download.allowed_networks=['127.0.0.1/32']",
            "download.resolve={" + ", ".join(f"'{k}': '{v}'" for k, v in RESOLVE.items()) + "}",
            "download.max_fetch_seconds=3", "download.shard_size=10", "report.enabled=false",
        ]
        cfg = load_config(None, overrides, out=str(tmp / "run"))
        console = Console(record=True, force_terminal=True, width=200)
        run_pipeline(cfg, console)
    raw.close()
    return rows, str(tmp / "run"), console.export_text(styles=False), raw


def test_every_row_gets_its_exact_status_and_reason(security_run):
    rows, run_root, _, _ = security_run
    manifest = assert_accounting(len(rows), run_root)
    assert [(m["status"], m["reason"]) for m in manifest] == [(r[2], r[3]) for r in rows]
    assert [m["caption"] for m in manifest] == [r[1] for r in rows]  # stored as given


def test_the_workers_record_their_verdict_beside_the_servers_text(security_run):
    """In the download shards, each fetched row's reason is the worker's verified verdict
    (fetch_reason); the error message, whatever the server made of it, is not read."""
    rows, run_root, _, raw = security_run
    by_caption = {r[1]: r for r in rows}
    parts = sorted(p for p in Path(run_root, "downloaded").glob("*.parquet") if not p.name.endswith("_hosts.parquet"))
    shards = pa.concat_tables([pq.read_table(p, columns=["caption", "status", "fetch_reason"]) for p in parts]).to_pylist()
    fetched_and_failed = [s for s in shards if s["status"] != "success"]
    assert len(fetched_and_failed) == 9  # 4 forged or stalled answers, 5 names refused before connecting
    assert all(s["fetch_reason"] == by_caption[s["caption"]][3] for s in fetched_and_failed)
    assert sorted(raw.hits) == sorted(p for p in forged_routes())  # each answer asked for once


def test_the_run_summary_prints_literally(security_run):
    _, run_root, printed, _ = security_run
    assert "private_host" in printed and "timeout" in printed and "bad_http_response" in printed
    console = Console(record=True, force_terminal=True, width=200)
    hostile = {"rows_in": 3, "kept": 1, "wall_seconds": 1.0, "rows_per_second": 3.0,
               "statuses": {"kept": 1, "blocked [/bold]": 2},
               "reasons": [{"status": "blocked [/bold]", "reason": "x[link=file:///etc/passwd]y[/link]\x1b[2J", "count": 2}]}
    print_summary(hostile, run_root + "[red]", console)  # raised MarkupError before
    text = console.export_text(styles=False)
    assert "blocked [/bold]" in text and "x[link=file:///etc/passwd]y[/link]\\x1b[2J" in text and "[red]" in text
    assert "\x1b]8;" not in console.export_text(styles=True)  # no hyperlink escape


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`curate` on a (forced) terminal, as a person would run it: Rich renders links and
    styles there, so markup in the data would show up as escape sequences."""
    env = dict(os.environ, FORCE_COLOR="1", TTY_COMPATIBLE="1", COLUMNS="400", TERM="xterm-256color",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(["curate", *args], capture_output=True, text=True, env=env, timeout=300)


def _assert_literal(out: str) -> None:
    assert "\x1b]8;" not in out, "a terminal hyperlink was printed"
    assert "\x1b[2J" not in out and "\u202e" not in out and "\x1b\\" not in out


def test_query_prints_every_cell_literally(security_run):
    _, run_root, _, _ = security_run
    done = _cli("query", run_root, "SELECT caption, url FROM manifest ORDER BY sample_id")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    _assert_literal(out)
    for text in (MARKUP, LINK, "a dog \\x1b[2J\\x1b]8;;file:///etc/passwd\\x1b\\running", "gpj.exe", "ftp://a[bold]b/x.jpg",
                 "http://a\\x1b[2Jb/x.jpg", "sea \\u202egpj"):
        assert text in out, text
    as_json = _cli("query", run_root, "SELECT caption FROM manifest ORDER BY sample_id", "--format", "json")
    assert as_json.returncode == 0 and "\u202e" not in as_json.stdout and "\x1b" not in as_json.stdout
    assert [r["caption"] for r in json.loads(as_json.stdout)] == [r[1] for r in security_run[0]]  # same values


def test_query_with_markup_in_the_sql_itself_does_not_crash(security_run):
    _, run_root, _, _ = security_run
    done = _cli("query", run_root, "SELECT '[/bold]' AS \"[red]x\", 'y' AS \"[link=file:///etc]z\"")
    assert done.returncode == 0, done.stderr
    assert "[/bold]" in done.stdout and "[red]x" in done.stdout and "[link=file:///etc]z" in done.stdout
    _assert_literal(done.stdout)


def test_stats_print_every_cell_literally(security_run):
    _, run_root, _, _ = security_run
    done = _cli("stats", run_root)
    assert done.returncode == 0, done.stderr
    _assert_literal(done.stdout)
    assert "a[bold]b" in done.stdout and "a\\x1b[2jb" in done.stdout  # hosts, as top_domains lower-cases them


# -- 13: SQL can read the views and nothing else --

@pytest.mark.parametrize("sql", [
    "COPY (SELECT * FROM manifest) TO '{run}/manifest/part-99999.parquet' (FORMAT parquet)",
    "COPY (SELECT * FROM manifest) TO '{run}/manifest/part-00000.parquet' (FORMAT parquet, USE_TMP_FILE false)",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('{run}/rows/*.parquet')",
    "ATTACH '{run}/x.duckdb' AS x",
    "INSTALL httpfs FROM 'http://127.0.0.1:9/'",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SELECT * FROM glob('/etc/*')",
])
def test_query_reaches_nothing_outside_the_run(security_run, sql):
    rows, run_root, _, _ = security_run
    before = sorted(os.listdir(Path(run_root, "manifest")))
    done = _cli("query", run_root, sql.format(run=run_root))
    assert done.returncode == 2 and "query failed" in done.stderr, done.stdout + done.stderr
    assert sorted(os.listdir(Path(run_root, "manifest"))) == before and not Path(run_root, "x.duckdb").exists()
    assert read_manifest(run_root).num_rows == len(rows)
    again = _cli("query", run_root, "SELECT count(*) AS n FROM manifest", "--format", "json")
    assert json.loads(again.stdout) == [{"n": len(rows)}]


def test_the_views_still_read_with_external_access_off(security_run):
    rows, run_root, _, _ = security_run
    sql = ("SELECT (SELECT count(*) FROM manifest) AS m, (SELECT count(*) FROM scored) AS s, "
           "(SELECT count(*) FROM output) AS o, current_setting('enable_external_access') AS external")
    done = _cli("query", run_root, sql, "--format", "json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)[0]
    fetched = sum(1 for r in rows if r[2] != "blocked" or r[1].startswith("by name"))
    assert got == {"m": len(rows), "s": fetched, "o": 1, "external": False}


def test_allow_external_access_is_explicit(security_run, tmp_path):
    _, run_root, _, _ = security_run
    extra = tmp_path / "extra.csv"
    extra.write_text("a,b\n1,2\n")
    sql = f"SELECT count(*) AS n FROM read_csv('{extra}')"
    assert _cli("query", run_root, sql).returncode == 2
    done = _cli("query", run_root, sql, "--format", "json", "--allow-external-access")
    assert done.returncode == 0 and json.loads(done.stdout) == [{"n": 1}], done.stderr
