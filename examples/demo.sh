#!/usr/bin/env bash
# The main job on the embedded SmolLM2-135M-Instruct: decompose once, make an expert, answer with and without it.
set -euo pipefail
OUT=${1:-runs/demo}
T2=${T2:-.venv/bin/t2}
Q="What is the capital of France?"
mkdir -p "$OUT"
echo "== 1. decompose the MLP weights once (cached under \${T2_HOME:-~/.cache/transformer-squared}/svd)"
$T2 decompose --model smollm2-135m-instruct
echo "== 2. an untrained expert (reference initialisation: z = sigmoid(0.1 + N(0, 0.01²)))"
$T2 expert init --model smollm2-135m-instruct --out "$OUT/untrained" --label demo \
    --description "Untrained SVF expert used by the demo."
echo "== 3. answer with the base model"
$T2 generate "$Q" --model smollm2-135m-instruct --max-new-tokens 24
echo "== 4. answer with the expert applied (merged into the weights)"
$T2 generate "$Q" --model smollm2-135m-instruct --expert "$OUT/untrained" --max-new-tokens 24
