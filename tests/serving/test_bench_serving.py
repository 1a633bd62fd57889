"""scripts/bench_serving.py: the CPU time it reads for the server's processes, and
the requests served that it divides that time by."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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

    spent = bench_serving.cpu_per_request(before, after, served=1)
    assert spent["model instances"] >= 0.25 * 1000  # the child's 0.3 s, in ms
    assert spent["tritonserver"] >= 0


def test_a_server_that_is_gone_gives_no_cpu_figures_and_the_note_says_so():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)

    reading = bench_serving.cpu_seconds(gone.pid)

    assert reading is None
    assert bench_serving.cpu_per_request({"tritonserver": 1.0}, reading, served=10) is None
    assert bench_serving.cpu_note(None) == "CPU not read: the server exited during the row"
    assert (
        bench_serving.cpu_note({"tritonserver": 0.5})
        == "CPU ms per served request: tritonserver 0.50"
    )


def test_cpu_figures_are_the_cpu_spent_over_the_requests_the_server_served():
    before = {"tritonserver": 1.0, "model instances": 2.0}
    after = {"tritonserver": 3.0, "model instances": 8.0}

    spent = bench_serving.cpu_per_request(before, after, served=4)

    # 2 s and 6 s over 4 requests served, in ms
    assert spent == pytest.approx({"tritonserver": 500.0, "model instances": 1500.0})


def test_a_row_in_which_the_server_served_nothing_reports_its_cpu_total():
    spent = bench_serving.cpu_per_request({"tritonserver": 1.0}, {"tritonserver": 1.25}, served=0)

    assert spent == pytest.approx({"tritonserver": 250.0})


def _row(concurrency: int, per_s: float, cpu: dict[str, float] | None):
    return bench_serving.Level(
        "Triton + gRPC client", concurrency, 100, 9.0, 15.0, per_s, cpu_ms_per_request=cpu
    )


def test_the_cpu_ceiling_uses_the_cheapest_row_and_compares_it_with_concurrency_one():
    one = _row(1, 100.0, {"tritonserver": 1.0, "model instances": 11.0, "clients": 1.0})
    sixteen = _row(16, 180.0, {"tritonserver": 0.5, "model instances": 9.0, "clients": 0.5})
    sixty_four = _row(64, 190.0, {"tritonserver": 0.2, "model instances": 7.5, "clients": 0.3})

    (line,) = bench_serving.cpu_ceiling([one, sixteen, sixty_four], one, cores=2)

    # 2 cores / 8 ms of CPU per request at concurrency 64 = 250 msg/s, 2.5x the 100 msg/s
    assert line == (
        "CPU ceiling: 2 cores / 8.00 ms of CPU per request (the cheapest, at concurrency 64)"
        " = 250.0 msg/s, 2.50x concurrency 1"
    )


def test_no_cpu_ceiling_is_claimed_without_cpu_figures():
    one = _row(1, 100.0, None)
    assert bench_serving.cpu_ceiling([one, _row(16, 180.0, None)], one, cores=2) == []
