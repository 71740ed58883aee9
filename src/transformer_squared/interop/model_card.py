"""Model cards (README.md with hub front matter) for merged and LoRA exports, from `export.py`'s metadata."""

from __future__ import annotations

import json
from typing import Any

from ..models.load import BUILTINS

REPO_URL = "https://github.com/SakanaAI/self-adaptive-llms"


def _hub_base(name: str) -> str | None:
    if name in BUILTINS:
        return BUILTINS[name].origin  # the hub checkpoint the built-in was quantised from
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    return None


def _front_matter(base: str, library: str, tags: list[str]) -> str:
    hub = _hub_base(base)
    lines = ["---", f"library_name: {library}"]
    if hub:
        lines.append(f"base_model: {hub}")
    lines += ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    return "\n".join(lines)


def _value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def _base_line(meta: dict) -> str:
    name = meta["base_model"]
    if name in BUILTINS:
        spec = BUILTINS[name]
        packages = ", ".join(f"`{p}=={spec.version}`" for p in spec.packages)
        gguf = f"`{spec.files[0][1].rsplit('/', 1)[-1]}`" if len(spec.files) == 1 else f"in {len(spec.files)} parts"
        return f"`{name}`: {spec.origin} as shipped in {packages} (GGUF {gguf}, dequantised to float32)"
    return f"`{name}`"


def _expert_section(e: dict, alpha: float | None) -> list[str]:
    title = e["label"] or "(unlabelled)"
    out = [f"### Expert `{title}`" + (f" — α = {alpha:g}" if alpha is not None else ""), ""]
    if e["description"]:
        out.append(f"- description: {e['description']}")
    out.append(f"- training task: {e['task'] or 'none (untrained expert)'}")
    out.append(f"- parametrisation: {e['parametrisation']}, {e['n_params']:,} parameters over {e['n_targets']} "
               f"target matrices (base fingerprint `{e['fingerprint']}`)")
    if e["provenance"]:
        out.append("- training data and provenance:")
        out += [f"  - {k}: {_value(v)}" for k, v in sorted(e["provenance"].items())]
    if e["metrics"]:
        out.append("- measured metrics (from the expert's metadata):")
        out += [f"  - {k}: {_value(v)}" for k, v in sorted(e["metrics"].items())]
    else:
        out.append("- measured metrics: none recorded")
    return out + [""]


def merged_card(meta: dict) -> str:
    """README.md of a merged checkpoint: base, experts with α, their data and metrics."""
    lines = [_front_matter(meta["base_model"], "transformers", ["transformer-squared", "svf", "merged"]),
             "# Transformer² merged checkpoint", "",
             f"Base model: {_base_line(meta)}.", "",
             "Each target matrix W = U·diag(s)·Vᵀ was replaced by W' = U·diag(s')·Vᵀ, with "
             "s' = s ⊙ z · (Σs / Σ(s ⊙ z)) and z = Σₖ αₖ zₖ over the experts below "
             f"(Singular Value Fine-tuning, Transformer², {REPO_URL}). "
             "The folder loads with plain `transformers`:", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")',
             'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")', "```", "", "## Experts", ""]
    for e, a in zip(meta["experts"], meta["alpha"]):
        lines += _expert_section(e, a)
    lines += [f"Exported with transformer-squared {meta['t2_version']}.", ""]
    return "\n".join(lines)


def lora_card(meta: dict) -> str:
    """README.md of a LoRA export: base, expert, rank and approximation error."""
    worst = max(meta["rel_error"].items(), key=lambda kv: kv[1])
    lines = [_front_matter(meta["base_model"], "peft", ["transformer-squared", "svf", "lora"]),
             "# Transformer² expert as a LoRA adapter", "",
             f"Base model: {_base_line(meta)}.", "",
             f"The SVF expert's update ΔW = U·diag(s' − s)·Vᵀ of each target, truncated to the {meta['rank']} "
             "singular directions with the largest |s'ᵢ − sᵢ| (the best rank-R approximation), split as "
             "B = U_R·diag(sign·sqrt|Δ|), A = diag(sqrt|Δ|)·V_Rᵀ, with lora_alpha = r (scale 1).", "",
             f"- rank r: {meta['rank']}, adapter parameters: {meta['n_params']:,}",
             f"- relative approximation error ‖ΔW − ΔW_R‖_F / ‖ΔW‖_F over all targets: {meta['overall_rel_error']:.4f}"
             f" (worst target `{worst[0]}`: {worst[1]:.4f})", "",
             "```python", "from peft import PeftModel",
             "model = PeftModel.from_pretrained(base_model, \"<this folder or repo>\")", "```", "", "## Expert", ""]
    lines += _expert_section(meta["expert"], None)
    lines += [f"Exported with transformer-squared {meta['t2_version']}.", ""]
    return "\n".join(lines)
