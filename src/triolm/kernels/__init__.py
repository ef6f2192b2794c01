"""triolm's native CPU kernels: C++ sources shipped with the package, built once per
machine by `native` and called through ctypes."""
