"""Acceptance: sampled softmax trains a 1,000,000-item catalogue on CPU within 8 GiB."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_million_items_train_within_8_gib():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "sampled_softmax.py"),
                          "--items", "1000000", "--steps", "10"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["peak_rss_gib"] < 8.0, result  # the process's own peak, from getrusage
    assert result["last_loss"] < result["first_loss"] - 0.5, result
    assert result["full_softmax_logits_gib"] > 8.0  # what the full softmax would have needed
