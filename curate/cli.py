"""The ``curate`` command line: thin; parses, loads the config, calls the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from curate.core.textsafe import literal

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Curate image-text data into training shards.",
                  context_settings={"help_option_names": ["-h", "--help"]})
console = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    # soft_wrap: a path or bucket URI in the message stays whole on one line, to copy or grep;
    # literal: brackets in it (``[Errno 28]``, S3 keys, a caption quoted by DuckDB) are
    # text, not markup, and control characters are shown, not sent to the terminal.
    # Its own line breaks stay (config errors list one key per line).
    shown = Text("\n").join(literal(line) for line in message.split("\n"))
    err.print(Text.assemble(("error:", "bold red"), " ", shown), soft_wrap=True)
    raise typer.Exit(2)


def _print_version(value: bool) -> None:
    if value:
        from curate import __version__

        console.print(f"curate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Curate image-text data into training shards."""


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="the run config (YAML); see docs/config.md")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: --set clip.min_score=0.3")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="the run directory (overrides output.path)")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="an existing Ray cluster")] = None,
    extend: Annotated[bool, typer.Option(
        "--extend", help="grow a finished RUN with the input files it has not seen: only their rows are "
        "downloaded and scored, the run is decided again over all of them")] = False,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="start RUN again from nothing: an earlier curate run there is removed first (its entries "
        "only; refused for a folder that is not a curate run)")] = False,
) -> None:
    """Run the pipeline; re-running the same command on the same RUN resumes it."""
    import shlex
    import sys

    from curate.models.references import ModelReferenceError
    from curate.core.config import ConfigError, load_config
    from curate.core.inputs import InputError
    from curate.pipeline.runner import ConfigChanged, RunStopped, run_pipeline

    overrides = list(set_ or [])
    again = [a for a in sys.argv[1:] if a != "--fresh"]  # the command that resumes this run
    if address:
        overrides.append(f"ray.address={address}")
    try:
        cfg = load_config(config, overrides, out)
        run_pipeline(cfg, console, extend=extend, fresh=fresh)
    except KeyboardInterrupt as error:  # the runner said that the committed work is kept
        err.print(literal(f"to resume: curate {shlex.join(again)}"), soft_wrap=True)
        from curate.pipeline.interrupt import received_signal

        raise typer.Exit(128 + (getattr(error, "signum", None) or received_signal())) from None
    except ConfigChanged as error:  # never a dead end: the exact command that starts afresh
        _fail(f"{error}\nto start it afresh: curate {shlex.join(sys.argv[1:])} --fresh")
    except (ConfigError, InputError, ModelReferenceError, RunStopped) as error:
        _fail(str(error))


@app.command()
def retry(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="a finished run directory")],
    reasons: Annotated[Optional[list[str]], typer.Option(
        "--reasons", help="reason codes to fetch again (repeat, or comma-separated): timeout, http_503, http_5xx, ... "
        "[default: timeout, connection_error, http_429, http_5xx, shard_timeout]")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="how this retry fetches: --set download.per_host_rps=2 (download.timeout, threads, "
        "shard_timeout, max_per_host, per_host_rps, ...)")] = None,
) -> None:
    """Download again only the rows whose download failed with these reasons, score them and
    decide the run again (dedupe included); the summary says what the retry recovered. An
    interrupted retry resumes with the same command."""
    from curate.core.config import ConfigError
    from curate.models.references import ModelReferenceError
    from curate.pipeline.retry import retry as do_retry
    from curate.pipeline.runner import RunStopped

    names = [name for item in reasons or [] for name in item.split(",")]
    try:
        do_retry(run_dir, names or None, console, list(set_ or []))
    except KeyboardInterrupt:  # Ctrl-C: what it committed stays, the same command resumes it
        import shlex
        import sys

        err.print(literal(f"stopped: the work committed so far is kept; to resume: curate {shlex.join(sys.argv[1:])}"),
                  soft_wrap=True)
        raise typer.Exit(130) from None
    except (ConfigError, ModelReferenceError, RunStopped) as error:
        _fail(str(error))


@app.command()
def refilter(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="a finished run directory")],
    set_: Annotated[list[str], typer.Option("--set", help="a new threshold: --set clip.min_score=0.3")],
) -> None:
    """Re-decide a finished run at new thresholds from stored scores (no model runs);
    rewrites the manifest, the output shards and the summary."""
    from curate.core.config import ConfigError
    from curate.pipeline.runner import refilter as do_refilter

    try:
        do_refilter(run_dir, list(set_), console)
    except ConfigError as error:
        _fail(str(error))


@app.command()
def query(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="a run directory, local or s3://")],
    sql: Annotated[str, typer.Argument(
        help="DuckDB SQL over the views manifest (one row per input row), scored (scores and embeddings), output "
        "(the shards), hosts (download figures per host) and, for documents runs, manifest_images; docs/queries.md")],
    format: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    allow_external_access: Annotated[bool, typer.Option(
        "--allow-external-access",
        help="let the SQL read other files, use the network and extensions, and write files (off: it reads "
             "the run's views only)")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", help="stop the query after this many seconds (exit status 2); Ctrl-C always stops it")] = None,
) -> None:
    """Run a DuckDB query over a run's views (manifest, scored, output, hosts, manifest_images, eval_results) and print the result."""
    from curate.core.views import QueryError
    from curate.pipeline.query import print_result
    from curate.pipeline.query_process import QueryInterrupted, run_query_in_child

    if format not in ("table", "csv", "json"):
        _fail(f"--format must be table, csv or json, not {format!r}")
    if timeout is not None and not timeout > 0:
        _fail(f"--timeout must be a number of seconds above 0, not {timeout!r}")
    try:
        result = run_query_in_child(run_dir, sql, allow_external_access, timeout)
    except QueryInterrupted as error:
        err.print(literal(str(error)), soft_wrap=True)
        raise typer.Exit(130) from None
    except QueryError as error:
        _fail(str(error))
    print_result(result, format, console)


@app.command()
def stats(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="a run directory, local or s3://")],
    format: Annotated[str, typer.Option("--format", help="table | json")] = "table",
) -> None:
    """Ready quality queries: counts per status and reason, score and caption-length quantiles,
    top domains, kept fraction per input file."""
    from curate.core.views import QueryError
    from curate.pipeline.query import print_stats

    if format not in ("table", "json"):
        _fail(f"--format must be table or json, not {format!r}")
    try:
        print_stats(run_dir, format, console)
    except QueryError as error:
        _fail(str(error))


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="a finished run directory, local or s3://")],
    samples: Annotated[Optional[int], typer.Option("--samples", min=1, max=500, help="thumbnails per grid")] = None,
) -> None:
    """Write RUN/report/index.html: one self-contained page with plots and sample grids (docs/report.md)."""
    from curate.core.views import QueryError
    from curate.report.build import write_report

    try:
        uri = write_report(run_dir, samples)
    except QueryError as error:
        _fail(str(error))
    console.print(literal(f"report: {uri}"))


@app.command()
def export(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="a finished pairs run, local or s3://")],
    format: Annotated[str, typer.Option("--format", help="llava | datacomp-uids | clip-retrieval")],
    out: Annotated[Path, typer.Option("--out", help="the folder to write into")],
) -> None:
    """Write a run's kept samples for other tools: LLaVA pretraining JSON, a DataComp uid
    subset, or the CLIP embeddings in clip-retrieval's layout (docs/ecosystem.md)."""
    from curate.core.views import QueryError
    from curate.pipeline.export import ExportError, export as do_export

    try:
        result = do_export(run_dir, format, out, on_shard=lambda name, n: console.print(f"shard {name}: {n} samples"))
    except (ExportError, QueryError) as error:
        _fail(str(error))
    console.print(f"{format}: {result['samples']} samples -> {', '.join(result['files'])}")


@app.command("eval")
def eval_(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="a finished pairs run, local or s3://")],
    selection: Annotated[Optional[list[str]], typer.Option(
        "--selection", "-s", help="run | raw | clip | itm | clip+itm | capfilt | set:KEY=VALUE[,..] | uids:PATH "
        "(repeat; default run, raw, clip+itm, capfilt)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="one more selection: the run re-decided with these thresholds (--set clip.min_score=0.6)")] = None,
    uids: Annotated[Optional[list[str]], typer.Option("--uids", help="one more selection: a DataComp uid file")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="comma-separated training seeds")] = "0,1",
    zeroshot: Annotated[Optional[list[str]], typer.Option(
        "--zeroshot", help="a zero-shot classification set: a folder of one image folder per class (repeat)")] = None,
    retrieval: Annotated[Optional[list[str]], typer.Option(
        "--retrieval", help="a retrieval set: Parquet or WebDataset tars of image-caption pairs (repeat)")] = None,
    synthetic: Annotated[bool, typer.Option(
        "--synthetic", help="evaluate on held-out sets of the demo world, rendered fresh")] = False,
    model: Annotated[str, typer.Option("--model", help="curate-tiny-clip, an open_clip architecture or a JSON "
                                       "model config")] = "curate-tiny-clip",
    samples_seen: Annotated[int, typer.Option("--samples-seen", min=1, help="samples seen by every selection")] = 2048,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="open_clip epochs (DataComp's checkpoints)")] = 1,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="warmup steps")] = 10,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")] = "cpu",
    precision: Annotated[str, typer.Option("--precision", help="open_clip's: fp32, amp, ...")] = "fp32",
    cpus: Annotated[float, typer.Option("--cpus", help="CPUs per training job (a Ray resource)")] = 1.0,
    gpus: Annotated[float, typer.Option("--gpus", help="GPUs per training job (a Ray resource)")] = 0.0,
    address: Annotated[Optional[str], typer.Option("--address", help="an existing Ray cluster")] = None,
) -> None:
    """Train a small CLIP on selections of a finished run at a fixed number of samples seen,
    with several seeds, and evaluate each zero-shot (DataComp's loop; docs/eval.md). Writes
    RUN/eval/ (a job per selection and seed, resumable) and RUN/eval/results.parquet."""
    from curate.eval.runner import EvalError, evaluate_run
    from curate.eval.train import TrainConfig

    names = list(selection or [])
    if set_:
        names.append("set:" + ",".join(set_))
    names += [f"uids:{path}" for path in uids or []]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds must be comma-separated integers, not {seeds!r}")
    if device not in ("cpu", "cuda"):
        _fail(f"--device must be cpu or cuda, not {device!r}")
    train = TrainConfig(model=model, samples_seen=samples_seen, batch_size=batch_size, epochs=epochs, lr=lr,
                        warmup=warmup, device=device, precision=precision, cpus=cpus, gpus=gpus)
    try:
        evaluate_run(run_dir, names or None, seed_list, train, list(zeroshot or []), list(retrieval or []), synthetic,
                     address, console)
    except EvalError as error:
        _fail(str(error))


@app.command()
def describe(
    config: Annotated[Path, typer.Argument(help="a run config (YAML); see docs/config.md")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: --set clip.min_score=0.3")] = None,
    format: Annotated[str, typer.Option("--format", help="text | json")] = "text",
) -> None:
    """Print the run a config would make: its enabled stages in order, what each reads and
    writes, its resources and rules, and the decision. Nothing runs."""
    from curate.core.config import ConfigError, load_config
    from curate.flow.plan import make_plan
    from curate.pipeline.describe import print_description

    if format not in ("text", "json"):
        _fail(f"--format must be text or json, not {format!r}")
    try:
        # A config may leave the paths to the command line: describe reads neither.
        cfg = load_config(config, list(set_ or []),
                          fill_missing={"input.path": "input.parquet", "output.path": "(not needed)"})
        plan = make_plan(cfg)
        plan.kind.check(plan)
    except ConfigError as error:
        _fail(str(error))
    print_description(plan, format, console)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where the corpus and the run go")] = Path("curate-demo"),
    n: Annotated[Optional[int], typer.Option(
        "--n", min=20, help="input rows to generate (default 1000 pairs; 300 documents with --interleaved)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key of the demo config")] = None,
    interleaved: Annotated[bool, typer.Option(
        "--interleaved", help="a documents run: web pages with images, placed next to their sentences")] = False,
    judges: Annotated[str, typer.Option(
        "--judges", help="shipped | blind-itm | blind-clip: a weaker captioner and a judge blind to one attribute, "
        "with the default calibrated judging (docs/capfilt.md)")] = "shipped",
    eval_: Annotated[bool, typer.Option(
        "--eval", help="then train the tiny CLIP on raw, clip+itm and capfilt (3 seeds each) and compare them "
        "zero-shot on held-out scenes (docs/eval.md; ~15 min of CPU)")] = False,
) -> None:
    """Run the whole pipeline offline on a generated noisy corpus and score it against the truth."""
    from curate.core.config import ConfigError

    if eval_ and interleaved:
        _fail("--eval trains CLIP on a pairs run: leave out --interleaved")

    try:
        if interleaved:
            from curate.demo_documents import run_documents_demo

            run_documents_demo(out, n or 300, seed, list(set_ or []), console)
        else:
            from curate.demo import run_demo

            run_demo(out, n or 1000, seed, list(set_ or []), console, judges)
            if eval_:
                from curate.eval.demo import run_demo_eval

                run_demo_eval(str(out.resolve() / "run"), console)
    except ConfigError as error:
        _fail(str(error))


if __name__ == "__main__":
    app()
