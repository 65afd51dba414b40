"""curate: turn web image-text data into clean, deduplicated, well-captioned training shards."""

import os

# Defaults for the libraries underneath, set before any of them is imported. A user's
# own setting wins (setdefault).
# - albumentations (imported by img2dataset) phones home for a version check at import.
# - Ray 2.60 turns on token auth for local clusters and writes ~/.ray/auth_token.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

__version__ = "0.1.0"
