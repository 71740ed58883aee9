"""`t2 serve`: an OpenAI-compatible HTTP server that adapts every request (pass 1 per request, pass 2
in batches that mix experts). Needs the `serve` extra (FastAPI, uvicorn).

config.py (ServeConfig) · protocol.py (OpenAI shapes, errors) · routing.py (pass 1) · decode.py (batched
decoding, per-row stops) · factored.py (per-row SVF layers, serving form) · scheduler.py (the worker that
owns the model) · app.py / respond.py (endpoints, SSE) · server.py (start, stop).
"""

from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig", "serve"]


def serve(cfg: ServeConfig, ready=lambda url: None) -> None:
    """Run the server (imports FastAPI and uvicorn only now)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        from ..errors import ConfigError

        raise ConfigError(f"t2 serve needs the serve extra ({e.name} is missing): "
                          "pip install 'transformer-squared[serve]'") from None
    from .server import serve as run

    run(cfg, ready)
