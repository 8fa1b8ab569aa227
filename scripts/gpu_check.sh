#!/usr/bin/env bash
# One command for a GPU machine (NVIDIA GPU, CuPy installed, no network needed):
#   scripts/gpu_check.sh OUTDIR
# Runs from anywhere, on the repository it lives in (put on PYTHONPATH). Writes into OUTDIR
# at most these 9 files:
#   summary.txt (nvidia-smi, each part's status, the README's benchmark tables, the speed
#   goals met or missed), info.txt, graphs.txt (whether training steps are recorded as CUDA
#   graphs), tests-gpu.log, bench-<gpu>-<date>.{json,png,log}, benchmarks-smoke.log,
#   tests-all.log.
# The parts run in that order, the most telling first: the GPU tests, then the benchmark with
# its tables and goals, then the smoke run of the benchmark suite and the whole test suite.
# Each part is time-boxed, and the script ends within 9 minutes, with whatever the parts
# that did not finish in time left out (summary.txt says which). Without torch or mlxtend
# their tests and peers are skipped, with the reason.
set -u -o pipefail

OUT="${1:?usage: scripts/gpu_check.sh OUTDIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(( $(date +%s) - START )); }

# run NAME SECONDS LOGFILE CMD... : time-boxed, logged, status noted
run() {
    local name="$1" secs="$2" log="$3"; shift 3
    echo "=== [$name] (limit ${secs}s, at $(elapsed)s): $*" | tee -a "$SUMMARY"
    timeout --kill-after=10 "$secs" "$@" > "$log" 2>&1
    local rc=$?
    tail -n 25 "$log"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        note "--- [$name] TIMED OUT after ${secs}s (log: $log)"
    else
        note "--- [$name] exit status $rc (log: $log)"
    fi
    return 0
}

note "gpunn GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), repo $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

if command -v nvidia-smi > /dev/null 2>&1; then
    timeout 30 nvidia-smi 2>&1 | tee -a "$SUMMARY"
    GPU_NAME="$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
else
    note "nvidia-smi not found"
    GPU_NAME=""
fi
[ -n "$GPU_NAME" ] || GPU_NAME="nogpu"
SLUG="$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/nvidia//; s/[^a-z0-9]+/-/g; s/^-+|-+$//g')"
[ -n "$SLUG" ] || SLUG="gpu"
STAMP="$(date -u +%Y%m%d-%H%M)"
BASE="$OUT/bench-$SLUG-$STAMP"

for mod in cupy torch mlxtend matplotlib pytest_benchmark hypothesis; do
    if timeout 60 "$PY" -c "import $mod" > /dev/null 2>&1; then
        note "python module $mod: present"
    else
        note "python module $mod: MISSING or not importable in 60 s (its tests/peers are skipped)"
    fi
done

# 1. machine information (also proves gpunn imports and sees the GPU)
run info 60 "$OUT/info.txt" "$PY" -c \
    'from gpunn.bench import machine_info, format_machine_info; print(format_machine_info(machine_info()))'

# 1b. a few training steps: are they recorded as CUDA graphs (the speed depends on it)?
run graphs 60 "$OUT/graphs.txt" "$PY" -c '
import numpy, gpunn
from gpunn.backend.cupy_ops import CupyOps
ops = CupyOps()
net = gpunn.Network([12, 16, 3], activation="relu", output="softmax", loss="cross_entropy",
                    backend=ops)
X, y = numpy.random.default_rng(0).random((64, 12)), numpy.arange(64) % 3
net.fit(X, y, epochs=2, batch_size=8, progress=False)
print(f"steps recorded as CUDA graphs: {ops.recorded_steps} (expected: 1 or more); "
      f"problem with gpunn\x27s own cuBLAS handle: {ops.cublas_problem}")'

# 2. the GPU tests (the rest of the suite runs on every CI machine: it comes last)
run tests-gpu 150 "$OUT/tests-gpu.log" "$PY" -m pytest -rs -m gpu tests -q -p no:cacheprovider

# 3. the benchmark: numpy and cupy, JSON + PNG. The quick sweep (6 batch sizes per model on
# the GPU besides the configurations' own, no torch.compile): the full one, 14 batch sizes
# with 4 contenders and the GEMM each, takes longer than the 9 minutes. The configurations
# come before the rest of the sweep, so a short budget still measures them.
LEFT=$(( 420 - $(elapsed) ))
if [ "$LEFT" -lt 60 ]; then LEFT=60; fi
note "bench gets ${LEFT}s (quick sweep)"
# cupy first, so that the GPU numbers exist even if the time budget cuts the CPU part short
run bench "$LEFT" "$BASE.log" "$PY" -m gpunn bench --backends cupy,numpy --quick \
    --time-budget $(( LEFT - 45 )) --json "$BASE.json" --plot "$BASE.png"
if [ ! -s "$BASE.json" ]; then
    note "no JSON from the bench; trying once more on the GPU alone"
    LEFT2=$(( 480 - $(elapsed) ))
    if [ "$LEFT2" -gt 30 ]; then
        # its own log, then added to the first one's: both errors kept, in one file
        run bench-quick "$LEFT2" "$BASE.retry.log" "$PY" -m gpunn bench --backends cupy \
            --quick --json "$BASE.json" --plot "$BASE.png"
        { echo "=== the retry on the GPU alone"; cat "$BASE.retry.log"; } >> "$BASE.log"
        rm -f "$BASE.retry.log"
    fi
fi

# 4. the README's tables and the speed goals, read off the bench's JSON, into summary.txt:
# before the parts that may run into the 9 minutes
if [ -s "$BASE.json" ]; then
    timeout 30 "$PY" -c 'import sys; from gpunn.bench import format_markdown, read_json
print(format_markdown(read_json(sys.argv[1])))' "$BASE.json" 2>&1 | tee -a "$SUMMARY"
    timeout 30 "$PY" scripts/gpu_targets.py "$BASE.json" 2>&1 | tee -a "$SUMMARY"
fi

# 5. the pytest-benchmark suite as a smoke test (GPU cases included), then the whole suite,
# each with what is left: a part ends by 530 s, its kill 10 s later, within the 9 minutes
SMOKE=$(( 530 - $(elapsed) ))
if [ "$SMOKE" -gt 60 ]; then SMOKE=60; fi
if [ "$SMOKE" -ge 20 ]; then
    run benchmarks-smoke "$SMOKE" "$OUT/benchmarks-smoke.log" "$PY" -m pytest -rs benchmarks \
        --benchmark-disable -q -p no:cacheprovider
else
    note "benchmarks-smoke not run: ${SMOKE}s left of the 9 minutes"
fi
LEFT3=$(( 530 - $(elapsed) ))
if [ "$LEFT3" -ge 45 ]; then
    run tests-all "$LEFT3" "$OUT/tests-all.log" "$PY" -m pytest -rs tests -q -p no:cacheprovider
else
    note "tests-all not run: ${LEFT3}s left of the 9 minutes"
fi

note "done in $(elapsed)s; results in $OUT"
ls -l "$OUT"
