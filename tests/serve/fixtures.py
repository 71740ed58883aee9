"""A tiny model folder with two expert folders, and a `t2 serve` subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import json
import urllib.request

REPO = Path(__file__).resolve().parents[2]


def build_model_and_experts(root: Path) -> tuple[Path, list[Path]]:
    """tiny-llama/ and experts STEM/, Humanities/ under root (SVD cache under root/home)."""
    from labelled_experts import make_experts
    from tiny import build_tiny_llama

    from transformer_squared.models.load import load_model

    old = os.environ.get("T2_HOME")
    os.environ["T2_HOME"] = str(root / "home")  # the servers started with this root reuse the SVD cache
    try:
        folder = build_tiny_llama(root / "tiny-llama")
        model, _ = load_model(str(folder), device="cpu")
        experts = [e.save(root / e.meta.label) for e in make_experts(model)]
    finally:
        if old is None:
            os.environ.pop("T2_HOME")
        else:
            os.environ["T2_HOME"] = old
    return folder, [Path(p) for p in experts]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`t2 serve ...` as a child process; `url` ends in /v1."""

    def __init__(self, args: list[str], home: Path, wait: bool = True) -> None:
        self.port = free_port()
        env = {**os.environ, "T2_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
        cmd = [sys.executable, "-m", "transformer_squared.cli", "serve", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        if wait:
            self.wait()

    def wait(self, timeout: float = 180.0) -> None:
        """Return once /health answers; RuntimeError with the server's output if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"t2 serve exited {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("t2 serve did not start in time")

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
            return json.loads(r.read())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out
