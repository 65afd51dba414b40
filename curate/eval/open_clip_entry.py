"""``python -m curate.eval.open_clip_entry CONFIG_DIR -- ARGS``: open_clip's own training
entry point (open_clip_train.main.main, as ``python -m open_clip_train.main`` runs it) with
the model configs in CONFIG_DIR registered first (open_clip.add_model_config), so ``--model``
may name an architecture open_clip does not ship (curate's tiny CLIP). Nothing else differs
from open_clip's command line; its exit status is main's (-1 is a failure there)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import open_clip
    from open_clip_train.main import main as train_main

    config_dir, rest = argv[0], argv[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    open_clip.add_model_config(config_dir)
    result = train_main(rest)
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
