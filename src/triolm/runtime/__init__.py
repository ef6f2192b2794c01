"""The bridge between Trio and the engine: the engine driver, token streams, generations,
fan-out, prompt lanes, the event loop's instruments, shutdown stages."""
