"""``curate eval RUN``: DataComp's loop inside the pipeline (docs/eval.md).

Selections of a finished run are made from its stored scores without a model
(:mod:`curate.eval.selections`), written as WebDataset training shards from the downloaded
images (:mod:`curate.eval.shards`), trained with open_clip's own training code at a fixed
number of samples seen (:mod:`curate.eval.train`), evaluated zero-shot on the evaluation
sets the user names (:mod:`curate.eval.evalsets`, :mod:`curate.eval.metrics`), one Ray task
per (selection, seed) (:mod:`curate.eval.jobs`), and summarised over seeds
(:mod:`curate.eval.results`). :func:`curate.eval.runner.evaluate_run` ties them together.
"""
