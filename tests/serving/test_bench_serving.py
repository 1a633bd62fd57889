"""scripts/bench_serving.py: the CPU time it reads for the server's processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.script_modules import load_script

# a stand-in for tritonserver: it starts one child ("a model instance") that, when
# told, burns 0.3 s of CPU and exits, and reaps it
PARENT = textwrap.dedent(
    """
    import subprocess, sys
    burn = "import sys, time\\nsys.stdin.readline()\\nt = time.process_time()\\n" \\
        "while time.process_time() - t < 0.3:\\n    pass\\n"
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
    print("ready", flush=True)
    sys.stdin.readline()
    child.stdin.write(b"\\n"); child.stdin.flush(); child.wait()
    print("reaped", flush=True)
    sys.stdin.readline()
    """
)


bench_serving = load_script("bench_serving")


def _say(process: subprocess.Popen, line: str = "") -> str:
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


def test_a_model_instance_that_exits_during_a_row_still_counts_its_cpu():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout.readline().strip() == "ready"
        before = bench_serving.cpu_seconds(parent.pid)
        assert _say(parent) == "reaped"
        after = bench_serving.cpu_seconds(parent.pid)
    finally:
        parent.stdin.close()
        parent.wait(timeout=30)

    spent = bench_serving.cpu_per_request(before, after, requests=1)
    assert spent["model instances"] >= 0.25 * 1000  # the child's 0.3 s, in ms
    assert spent["tritonserver"] >= 0


def test_a_server_that_is_gone_gives_no_cpu_figures_and_the_note_says_so():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)

    reading = bench_serving.cpu_seconds(gone.pid)

    assert reading is None
    assert bench_serving.cpu_per_request({"tritonserver": 1.0}, reading, requests=10) is None
    assert bench_serving.cpu_note(None) == "CPU not read: the server exited during the row"
    assert bench_serving.cpu_note({"tritonserver": 0.5}) == "CPU ms per request: tritonserver 0.50"
