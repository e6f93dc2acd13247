#!/usr/bin/env bash
# Run a study config on a lent GPU machine for at most SECONDS, then pack its results (weights and ONNX files
# left out) for the trip back. Issue 13: "when the accelerator machine is lent, use it for the longest schedules
# and say which rows came from it". Every cell's result.json records the machine (environment.gpu, .cpu,
# versions); the study resumes here, on a CPU, for whatever it did not finish.
#   bash benchmarks/gpu/run_study.sh CONFIG RUN_DIR SECONDS WORKERS PACK_DIR
# Assumes python3 with torch (CUDA) and qsal's dependencies, qsal importable from src/, QSAL_DATA_DIR set.
set -uo pipefail
cfg=$1 run_dir=$2 seconds=$3 workers=$4 pack=$5
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, qsal; print('torch', torch.__version__, 'GPU', torch.cuda.get_device_name(0))" || exit 1
nproc
# the chain once, tiny, beside the study: a broken step stops everything within a minute
rm -rf /tmp/gpu_precheck /tmp/precheck.log   # a leftover finished precheck would pass without running
python3 -m qsal.cli run benchmarks/gpu/precheck.yaml --out /tmp/gpu_precheck --no-progress >/tmp/precheck.log 2>&1 &
pre=$!
timeout -k 5 "$seconds" python3 -m qsal.cli run "$cfg" --out "$run_dir" --workers "$workers" --no-progress &
main=$!
if ! wait $pre || grep -q "failed" /tmp/precheck.log; then
    echo "PRECHECK FAILED; stopping the study"; cat /tmp/precheck.log
    grep -h -A30 '"traceback"' /tmp/gpu_precheck/*/*/*/*/error.json 2>/dev/null | head -60
    pkill -f "qsal.cli run" ; sleep 2; pkill -9 -f "qsal.cli run"
else
    echo "precheck passed"; tail -8 /tmp/precheck.log
fi
wait $main; echo "study exit $?"
pkill -f "qsal.cli run"; pkill -f multiprocessing; sleep 3; pkill -9 -f "qsal.cli run"   # workers a stopped parent left behind
mkdir -p "$pack"
tar czf /tmp/results.tgz --exclude='*.safetensors' --exclude='*.onnx' --exclude='last.pt' "$run_dir"
split -b 15M -d /tmp/results.tgz "$pack/results.tgz."
ls -la "$pack"; find "$run_dir" -name result.json | wc -l
