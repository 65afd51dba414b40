"""Output that reads the same in a terminal and in a pipe, a file or a CI log.

Rich fits a table to the terminal, and when stdout is not one it assumes 80 columns and
cuts what does not fit (``clip_sc…``). Tables that people copy from logs and grep are
printed in full there instead; a terminal keeps rich's own fitting.
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.measure import Measurement

# Wider than any table curate prints; only the measurement's upper bound.
_UNBOUNDED = 100_000


def print_full(console: Console, renderable: RenderableType) -> None:
    """Print ``renderable`` (a rich Table) on ``console``; when the console is not a
    terminal, at the width its content needs, so that no name or value is cut."""
    if console.is_terminal or console.is_jupyter:
        console.print(renderable)
        return
    needed = Measurement.get(console, console.options.update_width(_UNBOUNDED), renderable).maximum
    if needed <= console.width:
        console.print(renderable)
        return
    # Console.print caps a width at the console's own: widen the console for this table (its
    # file, and its record if it keeps one, get the same text), then set it back.
    width = console.width
    console.width = needed
    try:
        console.print(renderable)
    finally:
        console.width = width


def quiet_ray_data() -> None:
    """Ray Data's own progress off, in a terminal and in a log: its bars (in a terminal they
    interleave with curate's and leave ``\x1b[A`` cursor-up lines behind) and its multi-line
    block per operator every 10 s (its non-interactive fallback). curate's own display
    (curate.core.progress) shows the steps: bars on a terminal, one line per step elsewhere."""
    import logging

    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Its one warning about the bars being off ("Progress bars disabled. To enable...") is
    # about what curate turned off on purpose: that module's logger only says errors.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
