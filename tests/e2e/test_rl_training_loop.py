"""The training-loop example (scripts/rl_training_loop.py) against a real `triolm serve`
process with tiny models. Clause ids (RL-…) refer to contracts/rl-serving.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.paths import REPO_DIR
from support.rl_models import model_b
from support.server_process import ServerProcess

BIN = Path(sys.executable).parent
SCRIPT = REPO_DIR / "scripts" / "rl_training_loop.py"


def test_rl_loop_001_training_loop_example_runs(tiny_model, tmp_path):
    a = tiny_model("qwen2")
    b = model_b()
    srv = ServerProcess([str(BIN / "triolm"), "serve", str(a.hf_dir), "--port", "{port}", "--api-key", "k",
                         "--weight-version", "A", "--log-level", "warning"], tmp_path / "server.log")
    try:
        srv.wait_ready()
        run = subprocess.run([sys.executable, str(SCRIPT), "--base-url", srv.base_url, "--api-key", "k",
                              "--checkpoint", str(b.hf_dir), "--checkpoint", str(a.gguf_path("F32")),
                              "--rollouts", "3"], capture_output=True, text=True, timeout=600)
    finally:
        srv.stop()
    assert run.returncode == 0, run.stdout + run.stderr + srv.output()
    summary = json.loads(run.stdout)
    assert summary["on_policy"] is True
    steps = summary["steps"]
    assert [s["weight_version"] for s in steps] == ["A", "step-1", "step-2"]
    assert [s["versions_seen"] for s in steps] == [["A"], ["step-1"], ["step-2"]]
    for s in steps:
        assert s["nodes"] == 3  # one node per episode: the second turn extended the first
        assert 0 < s["generated_tokens"] <= 3 * 2 * 12  # two turns of at most 12 tokens each
        assert s["nothing_new"] is True
