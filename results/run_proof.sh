#!/usr/bin/env bash
# Proof runs on the embedded SmolLM2-135M-Instruct (CPU, 2 cores shared with other jobs): train experts,
# then compare base vs expert on each run's held-out questions (split.json "holdout": never used for
# training nor for choosing best/). Kept small so it finishes on a busy 2-core machine.
#   T2_HOME=... bash results/run_proof.sh
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process: spinning OpenMP threads waste a shared CPU
RUNS=${RUNS:-runs/proof}
COMMON="--lr 2e-2 --micro-batch-size 8 --eval-batch-size 16 --seed 0"
[ -d "$RUNS/mmlu-stem/best" ] && [ "${SKIP_MMLU:-0}" = 1 ] || \
nice t2 train --task mmlu --subset category=STEM --out $RUNS/mmlu-stem --steps 5 --batch-size 16 --eval-every 5 \
  --val-fraction 0.05 --holdout-fraction 0.07 --max-val 48 $COMMON
# best/ stayed the step-0 expert (validation did not improve), so the trained step-5 expert is latest/
nice python benchmarks/train_proof.py $RUNS/mmlu-stem --which latest --limit 120 --out results/train_proof_mmlu.json
for cat in STEM "Social Science" Humanities Other; do
  dir=$RUNS/vmlu-$(echo "$cat" | tr 'A-Z ' 'a-z-')
  nice t2 train --task vmlu --data ../shared/data/vmlu --subset "category=$cat" --out "$dir" --steps 2 --batch-size 8 \
    --eval-every 2 --val-fraction 0.15 --holdout-fraction 0.25 --max-val 16 $COMMON
done
nice python benchmarks/train_proof.py $RUNS/vmlu-* --which latest --limit 40 --out results/train_proof_vmlu.json
