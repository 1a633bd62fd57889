"""TritonServer: the real tritonserver from nvidia-pytriton, started, checked and stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from serving.pbtxt import render_config
from serving.server import (
    ServerStartError,
    TritonServer,
    build_backend_dir,
    free_ports,
    server_environment,
)
from tests.conftest import write_fake_repository


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# without a server


def test_backend_dir_holds_the_python_backend_and_the_stub_for_this_python(tmp_path):
    python_dir = build_backend_dir(tmp_path / "backends") / "python"

    names = sorted(p.name for p in python_dir.iterdir())
    assert names == [
        "libtriton_python.so",
        "triton_python_backend_stub",
        "triton_python_backend_utils.py",
    ]
    assert all((python_dir / name).resolve().is_file() for name in names)


def test_server_environment_puts_this_venv_first_for_the_stub():
    env = server_environment({"PATH": "/usr/bin", "PYTHONPATH": "/elsewhere"})

    assert env["PATH"] == f"{Path(sys.executable).parent}:/usr/bin"
    assert env["PYTHONPATH"].endswith(":/elsewhere")
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]


def test_free_ports_are_distinct():
    ports = free_ports(3)
    assert len(set(ports)) == 3


def test_command_binds_localhost_and_loads_named_models(tmp_path):
    server = TritonServer(tmp_path, model_control_mode="explicit", load_models=["bulwark"])
    server._ports = {"http": 1, "grpc": 2, "metrics": 3}

    command = server.command(tmp_path / "backends")
    assert "--http-port=1" in command and "--metrics-port=3" in command
    assert "--http-address=127.0.0.1" in command and "--grpc-address=127.0.0.1" in command
    assert "--model-control-mode=explicit" in command and "--load-model=bulwark" in command


def test_command_turns_on_latency_summaries_unless_asked_not_to(tmp_path):
    commands = []
    for summaries in (True, False):
        server = TritonServer(tmp_path, summary_latencies=summaries)
        server._ports = {"http": 1, "grpc": 2, "metrics": 3}
        commands.append(server.command(tmp_path / "backends"))

    assert "--metrics-config=summary_latencies=true" in commands[0]
    assert "--metrics-config=summary_latencies=false" in commands[1]
    assert "--allow-metrics=true" in commands[0] and "--metrics-address=127.0.0.1" in commands[0]


def test_bad_settings_are_rejected_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="model_control_mode must be one of"):
        TritonServer(tmp_path, model_control_mode="sometimes")
    with pytest.raises(ValueError, match="load_models needs model_control_mode='explicit'"):
        TritonServer(tmp_path, load_models=["bulwark"])
    with pytest.raises(ValueError, match=r"ports may name .*, got \['admin'\]"):
        TritonServer(tmp_path, ports={"admin": 9000})
    with pytest.raises(RuntimeError, match="has not been started"):
        _ = TritonServer(tmp_path).http_url
    with pytest.raises(RuntimeError, match="has not been started; it has no process"):
        _ = TritonServer(tmp_path).pid


# with a server


@pytest.mark.server
def test_server_is_ready_and_serves_the_model_with_its_rendered_config(fake_server):
    status, _ = get(f"{fake_server.http_url}/v2/health/ready")
    _, body = get(f"{fake_server.http_url}/v2/models/bulwark/config")
    config = json.loads(body)

    assert status == 200
    assert config["backend"] == "python" and config["max_batch_size"] == 64
    assert [t["name"] for t in config["input"]] == ["RAW_MESSAGE", "ORG_ID", "MESSAGE_KIND"]
    assert config["dynamic_batching"]["preferred_batch_size"] == [16, 64]
    assert get(fake_server.metrics_url)[0] == 200


@pytest.mark.server
def test_the_process_id_is_tritonservers_and_its_model_instances_are_its_children(fake_server):
    import psutil

    server = psutil.Process(fake_server.pid)
    children = server.children(recursive=True)

    assert server.name() == "tritonserver"
    assert children and all("triton_python" in child.name() for child in children)


@pytest.mark.server
def test_stop_ends_the_server_and_frees_its_ports(tmp_path):
    port = free_ports(1)[0]
    with TritonServer(tmp_path, model_control_mode="explicit", ports={"http": port}) as server:
        assert server.http_url == f"http://127.0.0.1:{port}"
        assert get(f"{server.http_url}/v2/health/ready")[0] == 200
        assert server.grpc_url.startswith("grpc://127.0.0.1:")

    assert not server.is_running()
    assert not is_listening(port)


@pytest.mark.server
def test_a_server_that_was_killed_has_no_pid_to_read_and_still_stops_cleanly(tmp_path):
    server = TritonServer(tmp_path, model_control_mode="explicit").start()
    pid = server.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)

    killed = f"exited with code -{signal.SIGKILL}; it has no process"
    with pytest.raises(RuntimeError, match=killed):
        _ = server.pid
    server.stop()
    assert not server.is_running()


@pytest.mark.server
def test_a_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ServerStartError, match="is not a folder"):
        TritonServer(tmp_path / "nowhere").start()


@pytest.mark.server
def test_an_unparseable_config_stops_the_start_with_the_servers_errors(tmp_path):
    repository = write_fake_repository(tmp_path, config_text='name: "bulwark"\nbackend: [oops\n')

    server = TritonServer(repository, startup_timeout_s=60)

    with pytest.raises(ServerStartError, match="exited with code") as caught:
        server.start()
    assert "bulwark" in str(caught.value) and "errors in its log" in str(caught.value)
    assert str(server.log_path) in str(caught.value) and server.log_path.is_file()
    assert not server.is_running()
    shutil.rmtree(server.log_path.parent)


@pytest.mark.server
def test_a_config_that_disagrees_with_tensors_py_fails_the_model_load(tmp_path):
    stale = render_config().replace(
        '{ name: "SCORE", data_type: TYPE_FP32', '{ name: "SCORE", data_type: TYPE_FP64'
    )
    repository = write_fake_repository(tmp_path, config_text=stale)

    server = TritonServer(repository, startup_timeout_s=60, log_path=tmp_path / "server.log")

    with pytest.raises(ServerStartError, match="must declare SCORE as TYPE_FP32, got TYPE_FP64"):
        server.start()
