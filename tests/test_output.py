"""A command's output is a report for a person: the quickstart's steps, run as a user runs
them, print rayrec's lines once each, with no Ray log lines, prefixes or colours."""
import os
import re
import subprocess
import sys

RAYREC = os.path.join(os.path.dirname(sys.executable), "rayrec")
LIBRARY_LINE = re.compile(r"\b(INFO|WARNING|WARN)\b|\(raylet\)|\(\w+ pid=\d+|pid=\d+\)|core_worker|"
                          r"\x1b\[|Traceback|FutureWarning|UserWarning")


def test_the_quickstart_prints_each_line_once_and_no_library_logs(tmp_path):
    done = subprocess.run([RAYREC, "quickstart", "--events", "20000", "--epochs", "1", "--out", str(tmp_path / "qs")],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 0, "\n".join(lines[-30:])
    assert any(line.startswith("[rayrec] day 1:") for line in lines)         # the workers' lines do arrive
    assert any("torch thread(s)" in line for line in lines)
    noisy = [line for line in lines if LIBRARY_LINE.search(line)]
    assert noisy == [], noisy
    doubled = sorted({line for line in lines if lines.count(line) > 1})
    assert doubled == [], doubled
