"""Infrastructure below the stages: config, storage, the run directory, DuckDB helpers, progress counters, Ray start-up. Nothing here imports from the packages above it."""
