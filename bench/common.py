"""What the benchmark scripts share: real-size random bundles, photo-like images, prompts, servers, the machine."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
DEFAULT_BUNDLES = OUT / "bundles-real"
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "infra/gunicorn.conf.py"]

_ADJECTIVES = ("red", "small", "old", "happy", "wet", "shiny", "wooden", "striped", "sleepy", "golden")
_NOUNS = ("cat", "dog", "car", "house", "tree", "bicycle", "boat", "horse", "bird", "chair", "lamp", "cake",
          "train", "flower", "guitar", "phone", "shoe", "clock", "bridge", "mountain")
_PLACES = ("on a beach", "in the snow", "at night", "in a kitchen", "on the street", "in a forest", "under a table",
           "in the rain", "on a roof", "by a lake")


def ensure_bundles(bundles: Path, variants: list[str]) -> None:
    """Real-size random bundles (`python -m models.tiny --size real`), made once, in a child process
    (this process stays small: Linux carries a parent's peak RSS into a vforked child's ru_maxrss)."""
    for variant in variants:
        manifest = bundles / variant / "manifest.json"
        if manifest.is_file():
            spec = json.loads(manifest.read_text())
            if "size=real" in spec["origin"] and spec.get("onnx"):  # bundles made before the ONNX graphs are remade
                continue
        print(f"making real-size random bundle {bundles / variant} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "models.tiny", "--variant", variant, "--out", str(bundles),
                        "--size", "real", "--seed", "0"], check=True, cwd=REPO)


def photo_jpeg(seed: int = 0, width: int = 640, height: int = 480) -> bytes:
    """A photo-like JPEG: smooth colour fields plus fine noise (about 100 KB at 640x480, like a real photo;
    pure noise would be several times larger and slower to decode than photos are)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.3, 3)
    smooth = np.stack([128 + 100 * np.sin(x / 31 + phase[0]), 128 + 100 * np.cos(y / 27 + phase[1]),
                       128 + 60 * np.sin((x + y) / 43 + phase[2])], axis=-1)
    pixels = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photo_b64(seed: int = 0) -> str:
    return base64.b64encode(photo_jpeg(seed)).decode("ascii")


def median_seconds(fn, repeats: int) -> float:  # noqa: ANN001 - any zero-argument callable
    """Median wall time of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def prompts(count: int, start: int = 0) -> list[str]:
    """Distinct short prompts of 7-9 CLIP tokens ("a photo of a red cat on a beach")."""
    combos = [(a, n, p) for p in _PLACES for a in _ADJECTIVES for n in _NOUNS]
    return [f"a photo of a {a} {n} {p}" for a, n, p in (combos[(start + i) % len(combos)] for i in range(count))]


def save_json(path: Path | None, results: dict) -> None:
    """Keep every number of a run (the scripts' --json)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {len(os.sched_getaffinity(0))} CPUs, {mem_gb:.0f} GB, Python {platform.python_version()}"


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


class Server:
    """A gunicorn serving `app` (default: the service) on a free loopback port, started in its own process;
    `cpus`: the cores it may run on (an instance's vCPUs), the load generators keeping the others."""

    live: set["Server"] = set()  # started and not yet stopped: no bare-encoder sample while any is

    def __init__(self, env: dict[str, str], log_path: Path, app: str = "handler.wsgi:app",
                 cpus: set[int] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        environ = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "PYTHONPATH": str(REPO), **env}
        self.started = time.perf_counter()
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen([*GUNICORN, app], cwd=REPO, env=environ, stdout=self._log,
                                     stderr=subprocess.STDOUT, preexec_fn=pin)
        Server.live.add(self)

    def wait_ready(self, timeout: float = 300) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.log_path}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"not ready within {timeout} s; see {self.log_path}")

    def worker_hwm_mb(self) -> float:
        """Peak RSS (VmHWM) of the worker process, where the model lives."""
        import psutil

        children = psutil.Process(self.proc.pid).children()
        status = open(f"/proc/{children[0].pid}/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        Server.live.discard(self)
        self._log.close()


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path, app: str = "handler.wsgi:app",
            cpus: set[int] | None = None) -> Iterator[Server]:
    server = Server(env, log_path, app, cpus)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
