"""``curate demo --eval``: BLIP's question on the demo world. Does a CLIP trained on CapFilt's
captions beat one trained on the raw alt-text, at the same number of samples seen?

After the demo run, the tiny CLIP architecture is trained from scratch with open_clip on
``raw``, ``clip+itm`` and ``capfilt`` of that run with three seeds each and evaluated
zero-shot on held-out sets of the demo world (curate.eval.evalsets.write_synthetic_sets).
The same as ``curate eval RUN -s raw -s clip+itm -s capfilt --seeds 0,1,2 --synthetic
--samples-seen 6400`` after ``curate demo``.
"""

from __future__ import annotations

from rich.console import Console

SELECTIONS = ["raw", "clip+itm", "capfilt"]
SEEDS = [0, 1, 2]
SAMPLES_SEEN = 6400  # 100 steps of 64: about a minute of CPU a job for the tiny CLIP


def run_demo_eval(run_dir: str, console: Console, samples_seen: int = SAMPLES_SEEN):
    """Train and evaluate the demo's three selections; returns curate.eval.runner.EvalResult."""
    from curate.eval.runner import evaluate_run
    from curate.eval.train import TrainConfig

    console.rule("[bold]eval: raw vs clip+itm vs capfilt")
    return evaluate_run(run_dir, SELECTIONS, SEEDS, TrainConfig(samples_seen=samples_seen), synthetic=True,
                        console=console)
