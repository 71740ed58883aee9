"""Run a whole comparison from one YAML file (`t2 recipe run FILE [--data DIR] [--key value ...]`).

Stages, in order: `split` (one seeded split of the labelled data, per subject, shared by every system)
→ `decompose` → one SVF expert per category → the PEFT baselines (LoRA, IA3) → evaluation of every
system on the holdout part (base, best constant answer, baselines, each expert) → submission CSVs for
the unlabelled test split → `report` (table and chart) → `generate` (answers before/after each expert).
Each stage writes its outputs, then its completion marker `stages/<stage>.json` (atomically), which
records the stage's settings: a rerun skips complete stages, resumes an interrupted one (training from
latest/, evaluation from its partial file), and refuses a completed stage whose settings changed
(fields added to the code later count only when they are set).
The recipe calls the library, never the CLI. Every YAML section is a dataclass in `recipe/config.py`; the
stages are built in `recipe/stages.py`.
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any, Callable

from ..atomic import write_json
from ..config import dump_config
from ..errors import ConfigError
from .config import RecipeConfig, slug
from .stages import build_stages

Event = Callable[[str, str, int, int, dict], None]  # (start|done|skip, stage, index, total, info)


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def changed(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose value differs between a stage's saved and current settings. A key the saved
    settings lack is a field added to the code since: it counts only if its value is not None/empty."""
    out = []
    for key, value in now.items():
        if key not in saved:
            if value not in (None, "", [], {}, False):
                out.append(prefix + key)
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            out += changed(saved[key], value, f"{prefix}{key}.")
        elif saved[key] != value:
            out.append(prefix + key)
    return out + [prefix + k for k in saved if k not in now]


def run_recipe(cfg: RecipeConfig, on_event: Event | None = None) -> dict[str, Any]:
    """Run every stage not yet complete; returns {stage: marker} and the report's Comparison under 'report'."""
    out = cfg.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "recipe.yaml")
    stages = build_stages(cfg, out)
    done: dict[str, Any] = {}
    for i, st in enumerate(stages, 1):
        marker = out / "stages" / f"{slug(st.name)}.json"
        settings = _plain(st.settings)
        if marker.is_file() and all(p.exists() for p in st.outputs):
            saved = json.loads(marker.read_text(encoding="utf-8"))
            diff = changed(saved["settings"], settings)
            if diff:
                raise ConfigError(f"stage '{st.name}' in {out} was completed with other settings ({', '.join(diff[:3])}); "
                                  f"use another --out, or delete {marker} and its outputs to redo it")
            done[st.name] = saved
            if on_event:
                on_event("skip", st.name, i, len(stages), saved)
            continue
        if on_event:
            on_event("start", st.name, i, len(stages), {})
        t0, c0 = time.perf_counter(), time.process_time()
        info = st.run() or {}
        done[st.name] = {"stage": st.name, "settings": settings, "seconds": round(time.perf_counter() - t0, 1),
                         "cpu_seconds": round(time.process_time() - c0, 1),  # all threads: compare runs on a busy machine
                         # the process's peak RSS so far (Linux ru_maxrss, KiB): the stage where it rises needed it
                         "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                         "outputs": [str(p) for p in st.outputs], "info": info,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(done[st.name], marker)  # after the outputs: a marker means the stage is complete
        if on_event:
            on_event("done", st.name, i, len(stages), done[st.name])
    return done
