"""The run report (``curate report``) and the ready quality queries (``curate stats``)."""
