#!/usr/bin/env bash
# The GPU correctness run (issue 13): the whole test suite under xdist and plainly, and
# compute-sanitizer memcheck + racecheck over bench/sanitize.py, in one call of at most
# ~560 s wall. Run from the repository root on the GPU machine:
#
#     OUT=/some/dir PYTHONPATH=python bash bench/gpu_checks.sh
#
# Writes three logs under $OUT, each starting with a header (GPU and driver from nvidia-smi,
# kernel (Firecracker or gVisor), torch, triton, date) and ending with each step's exit code
# and wall time:
#   h200_tests_xdist.log  (a) python3 -m pytest -q -n 8 test/python   (fills TRITON_CACHE_DIR)
#   h200_sanitizer.log    (b) in the background from the start, concurrently with (a):
#                             bench/sanitize.py --compile-only -j 6 (outside the sanitizer: fills the cache),
#                             compute-sanitizer --tool memcheck --leak-check full python3 bench/sanitize.py,
#                             compute-sanitizer --tool racecheck python3 bench/sanitize.py --racecheck
#   h200_tests.log        (c) after (a): python3 -m pytest -q test/python with the warm cache
# Every step runs under `timeout`, so the logs always come back. Time limits (seconds) can be
# changed with T_XDIST (300), T_PLAIN (220), T_SAN (500, the whole of b), TOTAL (560).
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the directory for the logs}"
export PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/tc}"
mkdir -p "$OUT" "$TRITON_CACHE_DIR"
PY=python3
T_XDIST=${T_XDIST:-300}
T_PLAIN=${T_PLAIN:-220}
T_SAN=${T_SAN:-500}
TOTAL=${TOTAL:-560}
START=$(date +%s)
XDIST_LOG="$OUT/h200_tests_xdist.log"
PLAIN_LOG="$OUT/h200_tests.log"
SAN_LOG="$OUT/h200_sanitizer.log"
PYTEST_ARGS=(-q -p no:cacheprovider --durations=15 test/python)

now() { date +%s; }
left() { echo $(( START + $1 - $(now) )); }   # seconds left until START + $1
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

header() {  # $1 log, $2 title
  {
    echo "# $2"
    echo "# date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "# gpu, driver (nvidia-smi): $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | paste -sd ';' -)"
    echo "# host: $(uname -n), kernel $(uname -r) ($(case "$(uname -r)" in *-fc-*) echo Firecracker;; 4.4.0*) echo gVisor;; *) echo '?';; esac)), $(nproc) cores"
    $PY -c 'import sys, torch, triton; print(f"# python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")' 2>&1
    echo "# TRITON_CACHE_DIR=$TRITON_CACHE_DIR PYTHONPATH=$PYTHONPATH"
    echo "# commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'n/a (no .git here)')"
  } > "$1"
}

run_step() {  # $1 log, $2 name, $3 timeout, command...: appends output, exit code and wall time
  local log=$1 name=$2 t=$3; shift 3
  local t0 rc
  t0=$(now)
  echo "# --- $name: \$ $* (timeout ${t}s)" >> "$log"
  timeout -k 10 "$t" "$@" >> "$log" 2>&1
  rc=$?
  echo "# --- $name: exit $rc$([ $rc -eq 124 ] && echo ' (timed out)'), wall $(( $(now) - t0 )) s" >> "$log"
  return $rc
}

run_step_tee() {  # as run_step, also on stdout
  local log=$1 name=$2 t=$3; shift 3
  local t0 rc
  t0=$(now)
  echo "# --- $name: \$ $* (timeout ${t}s)" | tee -a "$log"
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "# --- $name: exit $rc$([ $rc -eq 124 ] && echo ' (timed out)'), wall $(( $(now) - t0 )) s" | tee -a "$log"
  return $rc
}

# (b) the sanitizer runs, started first: they are the slow part
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -1)
sanitizer_job() {
  header "$SAN_LOG" "compute-sanitizer over bench/sanitize.py (memcheck, racecheck)"
  echo "# compute-sanitizer: ${CS:-not found} $([ -n "$CS" ] && "$CS" --version 2>&1 | tail -1)" >> "$SAN_LOG"
  run_step "$SAN_LOG" "precompile" "$(min 150 "$(left $((T_SAN - 200)))")" \
    $PY bench/sanitize.py --compile-only -j 6
  if [ -z "$CS" ]; then
    echo "# compute-sanitizer not found: the plain run instead" >> "$SAN_LOG"
    run_step "$SAN_LOG" "plain" "$(left "$T_SAN")" $PY bench/sanitize.py
    return
  fi
  # options this compute-sanitizer knows: a nonzero exit on errors; padding after every
  # allocation, so that an access just past a tensor cannot land in its neighbour
  local help common=() pad=()
  help=$("$CS" --help 2>&1)
  grep -q -- "--error-exitcode" <<< "$help" && common+=(--error-exitcode 99)
  grep -q -- "--padding" <<< "$help" && pad+=(--padding 64)
  # each tensor its own allocation (no caching allocator), so that memcheck sees accesses past its end
  run_step "$SAN_LOG" "memcheck" "$(min 280 "$(left $((T_SAN - 100)))")" \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$CS" --tool memcheck --leak-check full ${common[@]+"${common[@]}"} ${pad[@]+"${pad[@]}"} \
    $PY bench/sanitize.py
  if grep -q "Device not supported" "$SAN_LOG"; then  # gVisor: the sanitizer refuses the device
    echo "# compute-sanitizer refused the device (gVisor?): the plain run instead of racecheck" >> "$SAN_LOG"
    run_step "$SAN_LOG" "plain" "$(left "$T_SAN")" $PY bench/sanitize.py
    return
  fi
  run_step "$SAN_LOG" "racecheck" "$(left "$T_SAN")" \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$CS" --tool racecheck ${common[@]+"${common[@]}"} \
    $PY bench/sanitize.py --racecheck
}
sanitizer_job &
SAN_PID=$!

# (a) the suite under xdist (fills the compile cache)
header "$XDIST_LOG" "python3 -m pytest -q -n 8 test/python"
run_step_tee "$XDIST_LOG" "pytest -n 8" "$(min "$T_XDIST" "$(left $((TOTAL - 40)))")" \
  $PY -m pytest -n 8 "${PYTEST_ARGS[@]}"
RC_A=$?

# (c) the plain suite, warm cache
header "$PLAIN_LOG" "python3 -m pytest -q test/python"
T_C=$(min "$T_PLAIN" "$(left $((TOTAL - 10)))")
if [ "$T_C" -gt 10 ]; then
  run_step_tee "$PLAIN_LOG" "pytest" "$T_C" $PY -m pytest "${PYTEST_ARGS[@]}"
  RC_C=$?
else
  echo "# --- pytest: not run (no time left)" | tee -a "$PLAIN_LOG"
  RC_C=125
fi

wait "$SAN_PID"
echo
echo "=== summary ($(( $(now) - START )) s) ==="
for f in "$XDIST_LOG" "$PLAIN_LOG" "$SAN_LOG"; do
  echo "--- $(basename "$f")"
  grep -E '^# gpu|^# --- .*exit|^sanitize:|ERROR SUMMARY|LEAK SUMMARY|RACECHECK SUMMARY|^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)|^FAILED|^ERROR' "$f" | tail -40
done
echo "exit codes: xdist $RC_A, plain $RC_C"
