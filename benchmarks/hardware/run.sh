#!/usr/bin/env bash
# Read-only hardware check on a machine with a real NVIDIA GPU; writes to $OUT.
# Never changes MIG mode or any GPU setting: guard/sitecustomize.py makes pynvml refuse
# every mutating call, and the only policies run (nopart, mps) need no MIG change.
#
#   OUT=/tmp/hw bash benchmarks/hardware/run.sh
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/miso-hw}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/benchmarks/hardware/guard:$PWD PYTHONUNBUFFERED=1
export MISO_STATE_DIR=/tmp/miso-hw-state MISO_GPU=nvml
PY=${PY:-python3}
log=$OUT/log.txt
stage() { echo "=== $(date -u +%T) $*" >>"$log"; }
stage env
{ date -u; uname -a; nvidia-smi; nvidia-smi -q | sed -n 1,60p; nvidia-smi mig -lgip; nvidia-smi mig -lgipp
  $PY -c "import pynvml; print('guard active:', getattr(pynvml.nvmlDeviceSetMigMode, 'miso_guard', False))"
  $PY --version; $PY -m pip list 2>/dev/null | grep -iE "^(nvidia-ml-py|typer|rich|scikit-learn|psutil|joblib|torch|pytest|hypothesis|click) "
  command -v nvidia-cuda-mps-control; } >>"$log" 2>&1
stage capture
timeout 60 $PY benchmarks/hardware/nvml_capture.py >"$OUT/capture.json" 2>>"$log"; echo "rc=$?" >>"$log"
ro=$OUT/miso_readonly.txt
for c in status layouts doctor; do
  stage "miso $c"
  echo "### miso $c --json" >>"$ro"
  timeout 40 $PY -m miso_cli $c --json >>"$ro" 2>>"$log"; echo "rc=$?" >>"$ro"
  timeout 40 $PY -m miso_cli $c >>"$log" 2>&1
done
stage "pytest -m gpu"
MISO_REAL_GPU=1 timeout 90 $PY -m pytest -m gpu tests/test_gpu_real.py -q -p no:cacheprovider -o addopts="" >>"$log" 2>&1; echo "rc=$?" >>"$log"
runs=$OUT/runs.txt
stage "miso profile"
timeout 100 $PY -m miso_cli profile benchmarks/hardware/pytorch_small.toml --max-time 20s --json >"$OUT/profile.json" 2>>"$runs"; echo "profile rc=$?" >>"$runs"
for pol in nopart mps; do
  stage "miso run $pol"
  echo "### miso run --policy $pol --json" >>"$runs"
  timeout 100 $PY -m miso_cli run benchmarks/hardware/pytorch_small.toml --policy $pol --json >>"$runs" 2>>"$runs"; echo "run $pol rc=$?" >>"$runs"
done
stage "mps interference"
timeout 220 $PY benchmarks/hardware/mps_real.py --out "$OUT/mps_real.json" 2>>"$log"; echo "rc=$?" >>"$log"
stage "after"
nvidia-smi --query-gpu=name,mig.mode.current,mig.mode.pending --format=csv >>"$log" 2>&1
stage done
