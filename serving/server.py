"""Run the real Triton Inference Server from the nvidia-pytriton wheel, on CPU.

Contract: `TritonServer(model_repository, ...)` is a context manager. `start()` builds
a backend folder for the running Python version, starts `tritonserver` bound to
127.0.0.1 on free ports (HTTP, gRPC, metrics), and returns once
`/v2/health/ready` answers 200 (every model loaded). It raises `ServerStartError`,
carrying the tail of the server's log, when the server exits or is not ready within
`startup_timeout_s`. `stop()` sends SIGTERM, then SIGKILL after `stop_timeout_s`.
`http_url`, `grpc_url` and `metrics_url` say where it listens; the server's stdout
and stderr go to `log_path`.

Metrics: `metrics_url` serves Triton's Prometheus page (`nv_inference_*`, with
p50/p90/p95/p99 summaries of queue and compute time unless `summary_latencies=False`)
and the Bulwark model's own verdict and score metrics (serving/metrics.py).

How the Python backend finds our code: its stub embeds CPython in isolated mode,
which ignores PYTHONPATH, and finds its prefix by looking up `python3` on PATH. The
server therefore gets this interpreter's folder first on PATH (so the stub runs in
this virtualenv, with its numpy below 2), this interpreter's libpython first on
LD_LIBRARY_PATH, and a PYTHONPATH (repository root, site-packages) that
serving/triton_model.py adds to `sys.path` itself.

Run it in the foreground (Ctrl-C stops it):

    .venv/bin/python -m serving.server --model-repository model_repository
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTROL_MODES = ("none", "poll", "explicit")
PORT_NAMES = ("http", "grpc", "metrics")
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB = "triton_python_backend_stub"
_TRITON_ERROR = re.compile(r"E\d{4} \d\d:\d\d:\d\d")


class ServerStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message ends with its log tail."""


def pytriton_dir() -> Path:
    """The installed `pytriton` package, which ships the server binary and backends."""
    import pytriton

    return Path(pytriton.__file__).resolve().parent


def build_backend_dir(target: Path) -> Path:
    """Make `target/python/` hold the Python backend and the stub for this Python.

    Returns `target`, ready for `--backend-directory`. Raises FileNotFoundError when
    the wheel has no stub for the running Python version.
    """
    server_dir = pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        available = sorted(p.name for p in (server_dir / "python_backend_stubs").iterdir())
        raise FileNotFoundError(
            f"nvidia-pytriton ships no Python backend stub for Python {version}; "
            f"stubs exist for {available}"
        )

    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = [server_dir / "backends" / "python" / name for name in BACKEND_FILES] + [stub]
    for source in sources:
        link = python_dir / source.name
        if not link.exists():
            link.symlink_to(source)
    return target


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its Python backend stubs need (see module doc)."""
    env = dict(os.environ if base is None else base)
    library_dirs = [str(pytriton_dir().parent / "nvidia_pytriton.libs")]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        library_dirs.insert(0, str(sysconfig.get_config_var("LIBDIR")))
    python_paths = [str(REPO_ROOT), sysconfig.get_paths()["purelib"]]

    env["LD_LIBRARY_PATH"] = _prepend(library_dirs, env.get("LD_LIBRARY_PATH"))
    env["PATH"] = _prepend([str(Path(sys.executable).parent)], env.get("PATH"))
    env["PYTHONPATH"] = _prepend(python_paths, env.get("PYTHONPATH"))
    return env


def _prepend(entries: list[str], existing: str | None) -> str:
    return os.pathsep.join(entries + ([existing] if existing else []))


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now.

    Another process may take one before tritonserver binds it; the start then fails
    with the log saying so, and a retry picks new ports.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TritonServer:
    """A tritonserver subprocess serving one model repository on 127.0.0.1.

    `ports` may fix any of "http", "grpc" and "metrics"; the others (all, by
    default) are free ports chosen at each start.
    """

    def __init__(
        self,
        model_repository: str | Path,
        *,
        model_control_mode: str = "none",
        load_models: Sequence[str] = (),
        log_path: str | Path | None = None,
        log_verbose: int = 0,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 15.0,
        ports: dict[str, int] | None = None,
        env: dict[str, str] | None = None,
        summary_latencies: bool = True,
    ) -> None:
        if model_control_mode not in CONTROL_MODES:
            raise ValueError(
                f"model_control_mode must be one of {CONTROL_MODES}, got {model_control_mode!r}"
            )
        if load_models and model_control_mode != "explicit":
            raise ValueError(
                f"load_models needs model_control_mode='explicit', got {model_control_mode!r}"
            )
        unknown = sorted(set(ports or {}) - set(PORT_NAMES))
        if unknown:
            raise ValueError(f"ports may name {PORT_NAMES}, got {unknown}")
        self.model_repository = Path(model_repository).resolve()
        self.requested_ports = {name: int((ports or {}).get(name, 0)) for name in PORT_NAMES}
        self.model_control_mode = model_control_mode
        self.extra_env = dict(env or {})
        self.summary_latencies = summary_latencies
        self.load_models = tuple(load_models)
        self.log_verbose = log_verbose
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._log_path = Path(log_path) if log_path else None
        self._log_is_default = log_path is None
        self._work_dir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._ports: dict[str, int] = {}

    # where it listens

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._port('http')}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self._port('grpc')}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._port('metrics')}/metrics"

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise RuntimeError("the server has not been started; its log path is chosen at start")
        return self._log_path

    @property
    def pid(self) -> int:
        """The tritonserver process id (its model instances run in child processes)."""
        if self._process is None:
            raise RuntimeError("the server has not been started; it has no process yet")
        if self._process.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {self._process.returncode}; it has no process"
            )
        return self._process.pid

    def _port(self, name: str) -> int:
        if name not in self._ports:
            raise RuntimeError(f"the server has not been started; it has no {name} port yet")
        return self._ports[name]

    # lifecycle

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> TritonServer:
        """Start tritonserver and wait until it is ready; see the module docstring."""
        if self._process is not None:
            raise RuntimeError("the server is running already; stop() it before starting again")
        if not self.model_repository.is_dir():
            raise ServerStartError(f"model repository {self.model_repository} is not a folder")

        self._work_dir = Path(tempfile.mkdtemp(prefix="bulwark-triton-"))
        if self._log_path is None:
            self._log_path = self._work_dir / "tritonserver.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._ports = self._choose_ports()
        command = self.command(build_backend_dir(self._work_dir / "backends"))

        logger.info(
            "starting tritonserver on %s (repository %s, log %s)",
            self.http_url,
            self.model_repository,
            self._log_path,
        )
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**server_environment(), **self.extra_env},
                cwd=self._work_dir,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(keep_log=True)  # the error names the log; leave it to be read
            raise
        return self

    def _choose_ports(self) -> dict[str, int]:
        """The requested ports, with a free one wherever 0 was asked for."""
        wanted = [name for name, port in self.requested_ports.items() if port == 0]
        return {**self.requested_ports, **dict(zip(wanted, free_ports(len(wanted)), strict=True))}

    def command(self, backend_dir: Path) -> list[str]:
        """The tritonserver command line for this server's ports and settings."""
        binary = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
        command = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--model-control-mode={self.model_control_mode}",
            "--http-address=127.0.0.1",
            f"--http-port={self._ports['http']}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self._ports['grpc']}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self._ports['metrics']}",
            f"--metrics-config=summary_latencies={str(self.summary_latencies).lower()}",
            f"--log-verbose={self.log_verbose}",
            # the server's own drain deadline comes before stop()'s SIGKILL
            f"--exit-timeout-secs={max(1, int(self.stop_timeout_s) - 5)}",
        ]
        command += [f"--load-model={name}" for name in self.load_models]
        return command

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        ready_url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(
                    f"tritonserver exited with code {code} before it was ready "
                    f"(repository {self.model_repository}); {self._log_summary()}"
                )
            if _answers_200(ready_url):
                logger.info("tritonserver ready on %s and %s", self.http_url, self.grpc_url)
                return
            time.sleep(0.2)
        raise ServerStartError(
            f"tritonserver was not ready within {self.startup_timeout_s:.0f} s "
            f"(repository {self.model_repository}); {self._log_summary()}"
        )

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, keep_log: bool = False) -> None:
        """SIGTERM, then SIGKILL (to the server's whole process group) after a grace time.

        The work folder goes, and with it the default log unless `keep_log`; a log at
        a given `log_path` always stays.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            timeout = self.stop_timeout_s
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver ignored SIGTERM for %.0f s; killing it", timeout)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            logger.info("tritonserver stopped (exit code %s)", process.returncode)
        if self._work_dir is not None:
            keep = keep_log and self._log_is_default
            doomed = self._work_dir / "backends" if keep else self._work_dir
            shutil.rmtree(doomed, ignore_errors=True)
            self._work_dir = None
        if self._log_is_default and not keep_log:
            self._log_path = None

    def _log_summary(self) -> str:
        errors = "\n".join(self.log_errors()) or "(none)"
        return f"errors in its log {self._log_path}:\n{errors}\nthe log ends:\n{self.log_tail()}"

    def log_errors(self, width: int = 600) -> list[str]:
        """The log's error lines (Triton writes them as "E<mmdd> ..."), each cut to `width`."""
        return [line[:width] for line in self._log_lines() if _TRITON_ERROR.match(line)]

    def _log_lines(self) -> list[str]:
        if self._log_path is None or not self._log_path.exists():
            return []
        return self._log_path.read_text(errors="replace").splitlines()

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the server's log ("" before it was started)."""
        return "\n".join(self._log_lines()[-lines:])


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a model repository with tritonserver.")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model-control-mode", choices=CONTROL_MODES, default="none")
    parser.add_argument("--load-model", action="append", default=[], dest="load_models")
    parser.add_argument("--log-file", type=Path, default=Path("runs/tritonserver.log"))
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument(
        "--no-summary-latencies",
        dest="summary_latencies",
        action="store_false",
        help="leave out the p50-p99 summaries of queue and compute time from the metrics",
    )
    for name, default in zip(PORT_NAMES, (8000, 8001, 8002), strict=True):
        parser.add_argument(f"--{name}-port", type=int, default=default, help="0: any free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    server = TritonServer(
        args.model_repository,
        model_control_mode=args.model_control_mode,
        load_models=args.load_models,
        log_path=args.log_file,
        log_verbose=args.log_verbose,
        startup_timeout_s=args.startup_timeout,
        ports={name: getattr(args, f"{name}_port") for name in PORT_NAMES},
        summary_latencies=args.summary_latencies,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM stops it like Ctrl-C
    try:
        with server:
            print(f"http {server.http_url}\ngrpc {server.grpc_url}\nmetrics {server.metrics_url}")
            print(f"log {server.log_path}; Ctrl-C stops the server", flush=True)
            while server.is_running():
                time.sleep(1.0)
            logger.error("tritonserver exited by itself; log ends:\n%s", server.log_tail())
            sys.exit(1)
    except ServerStartError as error:
        logger.error("%s", error)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
