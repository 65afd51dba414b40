"""The end-of-run hint: a run whose rows mostly ended for one reason says its likely cause
and the config key that changes it, instead of a summary table alone (issue #30: a local
corpus blocked whole as ``private_host`` ended with exit code 0 and no word of
``download.allow_private_hosts``)."""

from __future__ import annotations

from curate.core.config import CurateConfig
from curate.schemas import reasons as R

# A reason that ends at least this share of the input rows is the run's story.
MOSTLY = 0.5


def _advice(code: str, cfg: CurateConfig) -> str | None:
    """What to change for rows that ended with ``code``; None: no advice for it."""
    d, i = cfg.download, cfg.input
    fresh = "then start the run afresh with the same command and --fresh (the rows were checked when prepared)"
    advice = {
        R.PRIVATE_HOST.name: "the URLs point at a loopback, private or link-local address (a local or internal "
                             f"server?): set download.allow_private_hosts: true, or list its range in "
                             f"download.allowed_networks; {fresh}",
        R.REDIRECT_TO_PRIVATE_HOST.name: "the servers redirect to private addresses: set "
                                         "download.allow_private_hosts: true or download.allowed_networks if that is "
                                         "intended; then `curate retry RUN --reasons redirect_to_private_host`",
        R.TIMEOUT.name: f"the servers did not answer within download.timeout ({d.timeout:g} s per read): raise it, "
                        f"e.g. `curate retry RUN --set download.timeout={max(30, d.timeout * 3):g}`",
        R.SHARD_TIMEOUT.name: f"download shards ran out of download.shard_timeout ({d.shard_timeout:g} s): raise it "
                              "or download.threads, then `curate retry RUN`",
        R.CONNECTION_ERROR.name: "the hosts could not be reached (no network, a proxy, DNS?): when they can, "
                                 "`curate retry RUN` fetches these rows again",
        "http_429": "the servers rate-limit the run: set download.per_host_rps or download.max_per_host, then "
                    "`curate retry RUN --reasons http_429`",
        "http_403": "the servers refuse the requests (http_403): some hosts refuse unknown clients; check "
                    "download.user_agent_token",
        R.URL_MISSING.name: f"input.url_col is {i.url_col!r}: is that the column of the image URLs?",
        R.URL_INVALID.name: f"input.url_col is {i.url_col!r}: its cells are not URLs; is that the right column?",
        R.CAPTION_EMPTY.name: f"input.caption_col is {i.caption_col!r}: its cells are empty; is that the column of the "
                              "captions?",
        R.NOT_AN_IMAGE.name: "the bodies are not images (HTML pages, error pages?): check a few URLs in a browser",
        R.IMAGE_TOO_SMALL.name: f"the images are smaller than filters.min_side ({cfg.filters.min_side} px): lower "
                                f"it with `curate refilter RUN --set filters.min_side=...`",
        R.CLIP_SCORE_BELOW.name: "most captions score below clip.min_score: check the threshold against the score "
                                 "histogram of the report, and `curate refilter RUN --set clip.min_score=...`",
        R.ITM_PROB_BELOW.name: "most captions are below itm.min_prob: `curate refilter RUN --set itm.min_prob=...`",
    }
    return advice.get(code)


def run_hint(summary: dict, cfg: CurateConfig, run_root: str) -> str | None:
    """One line naming the reason that ended most of the run's rows, its share and what to
    change, or None when no single reason ended at least half of them (or it has no advice)."""
    total = summary.get("rows_in") or 0
    if not total or not summary.get("reasons"):
        return None
    top = max(summary["reasons"], key=lambda item: item["count"])
    code = top["reason"].split(":", 1)[0]
    if top["count"] < MOSTLY * total:
        return None
    advice = _advice(code, cfg)
    if advice is None:
        return None
    return f"{top['count']} of {total} rows are {top['status']} as {code}: " + advice.replace("RUN", run_root)
