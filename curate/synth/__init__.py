"""Synthetic data for the demo and the tests: a tiny image-text domain and a local HTTP server."""
