"""native.lib(): a call while the background build (prepare_async) is still running waits
for it instead of answering "no kernels" and sending the model down the torch paths."""

from __future__ import annotations

import threading
import time

import pytest

from triolm.kernels import native


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler: the native kernels cannot exist here")
def test_a_call_during_the_background_build_waits_for_the_library(monkeypatch):
    real_build = native._build
    started = threading.Event()

    def slow_build(cxx):
        started.set()
        time.sleep(0.5)  # a first compile takes seconds
        return real_build(cxx)

    monkeypatch.setattr(native, "_build", slow_build)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    native.prepare_async()
    assert started.wait(5)
    assert native.lib() is not None
    assert native.loop_busy_flag() is not None
