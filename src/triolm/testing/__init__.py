"""Helpers for tests and benchmarks: generated models, real tokenizers, servers in threads."""
