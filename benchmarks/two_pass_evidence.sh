#!/usr/bin/env bash
# The evidence run (docs/evidence.md, "Evidence on CPU"), every stage in order, on a quiet machine: each stage line
# stamped with the time and the load average. Stages are resumable; a rerun skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src OMP_NUM_THREADS=2
PY=${PY:-.venv/bin/python}
E=benchmarks/two_pass_evidence.py
stamp() { echo "### $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) :: $*"; }
stamp start
$PY $E train --family needle_haystack --family family_relationships; stamp small experts done
$PY $E train --family basic_arithmetic; stamp arithmetic expert done
$PY $E train --sweep; stamp arithmetic sweep done
$PY $E train-cls; stamp cls done
$PY $E eval base; $PY $E eval own --sweep; stamp base own done
$PY $E eval cls prompt oracle; stamp cls prompt oracle done
$PY $E table; stamp table 1
$PY $E eval expert uniform; stamp expert uniform done
$PY $E table; stamp table 2
$PY $E train --sweep; $PY $E eval own --sweep; stamp the continued sweep run done
$PY $E table; stamp end
