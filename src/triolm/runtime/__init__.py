"""The bridge between Trio and the engine: request lifecycle, engine driver, tokenization off the loop."""
