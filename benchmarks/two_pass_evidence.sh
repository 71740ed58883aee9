#!/usr/bin/env bash
# The evidence run, every stage in order, on the quiet machine: each line stamped with the time and the load average.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src OMP_NUM_THREADS=2
PY=${PY:-.venv/bin/python}
stamp() { echo "### $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) :: $*"; }
stamp start
$PY benchmarks/two_pass_evidence.py train --family needle_haystack --family family_relationships; stamp small experts done
$PY benchmarks/two_pass_evidence.py train --family basic_arithmetic; stamp arithmetic expert done
$PY benchmarks/two_pass_evidence.py train-cls; stamp cls done
$PY benchmarks/two_pass_evidence.py eval base own; stamp base own done
$PY benchmarks/two_pass_evidence.py eval cls prompt oracle; stamp cls prompt oracle done
$PY benchmarks/two_pass_evidence.py table; stamp table 1
$PY benchmarks/two_pass_evidence.py eval expert uniform; stamp expert uniform done
$PY benchmarks/two_pass_evidence.py table; stamp end
