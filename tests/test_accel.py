"""The accel seam: `model.accel: off` runs HF's and torch's modules and never imports
rayrec.accel; `auto` imports only what the model's classes need, and says what it did."""
import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
import torch
sys.path.insert(0, {tests!r})
import model_data as md
from rayrec.accelerated import accelerate
from rayrec.models.checkpoint import build_model
from rayrec.models.config import ModelConfig

torch.manual_seed(0)
model = accelerate(build_model(md.schema(), ModelConfig(arch={arch!r}, accel={accel!r}, d_model=16, n_head=2,
                                                        n_layer=1, max_len=md.MAX_LEN)))
model.train()
model(md.tensors(md.sessions(16))).backward()          # a whole training step's forward and backward
model.eval()
with torch.no_grad():
    model.recommend(md.tensors(md.sessions(4)), 5)
print(json.dumps({{"modules": sorted(m for m in sys.modules if m.split(".")[:2] == ["rayrec", "accel"]),
                  "report": model.accel_report,
                  "classes": sorted({{type(m).__module__ + "." + type(m).__name__ for m in model.modules()}})}}))
"""


def run(arch: str, accel: str) -> dict:
    import os

    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests, arch=arch, accel=accel)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch", ["gpt2", "gru"])
def test_accel_off_imports_no_accel_module_and_runs_plain_modules(arch):
    got = run(arch, "off")
    assert got["modules"] == []
    assert got["report"]["path"] == "plain" and got["report"]["why"] == "model.accel: off"
    assert not [c for c in got["classes"] if "accel" in c or ".Fast" in c]


def test_accel_auto_imports_only_what_the_architecture_uses():
    got = run("gru", "auto")
    assert "rayrec.accel.gru" in got["modules"] and "rayrec.accel.gpt2" not in got["modules"]
    assert not any(m in got["modules"] for m in ("rayrec.accel.llama", "rayrec.accel.bert", "rayrec.accel.xlnet"))
    assert got["report"]["path"] == "fast"
    assert "RNNBody -> FastRNNBody" in got["report"]["replaced"]
    assert "rayrec.accel.gru.FastRNNBody" in got["classes"]


def test_an_unsupported_transformers_version_switches_the_hf_forwards_off(monkeypatch):
    import torch

    import model_data as md
    from rayrec import accel

    monkeypatch.setattr(accel, "transformers_unsupported", lambda: "transformers 9.0 is outside the tested range")
    torch.manual_seed(0)
    model = md.model(arch="gpt2")
    report = model.accel_report
    assert report["path"] == "fast" and "outside the tested range" in report["why"]
    assert not [r for r in report["replaced"] if r.startswith("GPT2Model")]   # HF's GPT-2 runs as it is
    assert type(model.body.model).__name__ == "GPT2Model" and report["attention"] == "hf"
    model(md.tensors(md.sessions(8))).backward()


def test_the_same_config_gives_the_same_numbers_with_the_c_kernels_and_without():
    """accel_kernels: off runs the kernels' torch passes: the same masks and, in fp32, the
    same loss within float noise, so a run does not depend on its image's compiler."""
    import torch

    import model_data as md
    from rayrec.accel import kernels

    if kernels.library() is None:
        pytest.skip(f"C kernels {kernels.status()}")
    losses = []
    for use in ("auto", "off"):
        torch.manual_seed(0)
        model = md.model(arch="gpt2", dropout=0.2, accel_kernels=use).train()
        torch.manual_seed(1)
        losses.append(float(model(md.tensors(md.sessions(32))).detach()))
    assert abs(losses[0] - losses[1]) < 1e-5 * abs(losses[0])
