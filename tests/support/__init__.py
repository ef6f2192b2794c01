"""Helpers for tests and benchmarks: generated models, real tokenizers, servers in threads
and processes. Imported as `support`: pytest puts `tests/` (the top conftest's folder) on
sys.path, scripts insert it themselves. Not part of the installed package."""
