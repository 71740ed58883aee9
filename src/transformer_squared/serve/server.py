"""Start `t2 serve`: load the adapted model, build pass 1 and the scheduler, and run the app under
uvicorn. SIGTERM or Ctrl-C stops accepting connections, lets the requests in flight finish
(`graceful_timeout_s`), then stops the worker and returns."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from typing import Callable

from ..errors import ConfigError
from ..experts.adapted import load_adapted
from .app import State, build_app
from .config import ServeConfig
from .routing import Router
from .scheduler import Scheduler

log = logging.getLogger(__name__)


def prepare(cfg: ServeConfig) -> State:
    """The model, its experts, the offered strategies and a started scheduler."""
    am = load_adapted(cfg.model, experts=cfg.experts, device=cfg.device, dtype=cfg.dtype,
                      trust_remote_code=cfg.trust_remote_code)
    clash = {cfg.name or cfg.model, "t2"} & set(am.labels)
    if clash or len(set(am.labels)) < len(am.labels):
        raise ConfigError(f"experts: labels must be distinct and differ from the model ids 't2' and the base "
                          f"model's name; got {', '.join(am.labels)}")
    scheduler = Scheduler(am, cfg, Router(am, cfg))
    scheduler.start()
    return State(am, cfg, scheduler, cfg.name or cfg.model, int(time.time()))


def _drained(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(cfg: ServeConfig, ready: Callable[[str], None] = lambda url: None) -> None:
    """Serve until SIGTERM / SIGINT; `ready(url)` is called once the socket listens."""
    import uvicorn

    state = prepare(cfg)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        state.scheduler.stop()
        raise ConfigError(f"--host {cfg.host} --port {cfg.port}: cannot listen ({e.strerror})") from None
    config = uvicorn.Config(build_app(state), log_level=cfg.log_level, timeout_graceful_shutdown=
                            None if cfg.graceful_timeout_s is None else int(max(1, cfg.graceful_timeout_s)))
    server = uvicorn.Server(config)
    if threading.current_thread() is threading.main_thread():  # uvicorn re-raises SIGTERM after its drain:
        signal.signal(signal.SIGTERM, _drained)  # then this handler ends the process with status 0
    host, port = sock.getsockname()[:2]
    ready(f"http://{host}:{port}/v1 (models: {', '.join(state.model_ids())}; mixed batches: {state.scheduler.form})")
    server.run(sockets=[sock])
