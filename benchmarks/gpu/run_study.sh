#!/usr/bin/env bash
# Run one or more study configs side by side on a lent GPU machine for at most SECONDS, then pack their results
# (ONNX files left out; weights only up to WEIGHTS_MB, see below) for the trip back. Issue 13: "when the accelerator machine is lent, use it for
# the longest schedules and say which rows came from it". Every cell's result.json records the machine
# (environment.gpu, .cpu, versions); a study resumes here, on a CPU, for whatever it did not finish.
#   bash benchmarks/gpu/run_study.sh SECONDS PACK_DIR  CONFIG RUN_DIR WORKERS CPUS  [CONFIG RUN_DIR WORKERS CPUS ...]
# CPUS is a taskset list ("0-5"): each study gets its own cores, so the studies' worker threads (cores // workers,
# from the affinity) do not oversubscribe the machine and one study's latency timings are not another's noise.
# ONLY_n (n = 1, 2, ... in argument order), when set, holds the --only patterns of the n-th study, space-separated
# ("ONLY_1='pneumoniamnist/resnet18/* retinamnist/resnet18/*'"): a call that carries only some groups' folders
# must not start the others from scratch.
# Assumes python3 with torch (CUDA) and qsal's dependencies, qsal importable from src/, QSAL_DATA_DIR set.
# Before the call, here: the tree must travel in 64 MiB and the data with it (benchmarks/gpu/payload.py: hold the other
# results, copy the data to .devdata, check the size; restore afterwards), and captum, missing from the device image,
# goes as a wheel in .whl (pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl captum==0.9.0).
# The call (session 13's, 3 ResNet-18 SGT groups; carry [".whl", ".devdata"], timeout_s 600):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
#   export QSAL_DATA_DIR=$PWD/.devdata WEIGHTS_MB=46 ONLY_1='pneumoniamnist/resnet18/seed0 ...'
#   bash benchmarks/gpu/run_study.sh 515 $OUT configs/medmnist_resnet18_full.yaml \
#       benchmarks/results/study_medmnist_resnet18_full 3 0-15 > $OUT/run.log 2>&1
# Timings seen on the H200 with 3 groups side by side: ResNet-18 (28) PneumoniaMNIST SGT 410 s a seed (100 epochs).
set -uo pipefail
seconds=$1 pack=$2; shift 2
if (( $# == 0 || $# % 4 != 0 )); then echo "usage: $0 SECONDS PACK_DIR CONFIG RUN_DIR WORKERS CPUS [...]"; exit 2; fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, qsal; print('torch', torch.__version__, 'GPU', torch.cuda.get_device_name(0))" || exit 1
nproc
# the chain once, tiny, beside the studies: a broken step stops everything within a minute or two
# PRECHECK=0 skips it: when the lease leaves no time for a second call, stopping early saves nothing, and the
# precheck's training competes with the studies' for the GPU and the cores.
rm -rf /tmp/gpu_precheck /tmp/precheck.log   # a leftover finished precheck would pass without running
if [[ ${PRECHECK:-1} == 0 ]]; then
    echo "precheck skipped (PRECHECK=0)" > /tmp/precheck.log; true & pre=$!
else
    timeout -k 5 "$seconds" python3 -m qsal.cli run benchmarks/gpu/precheck.yaml --out /tmp/gpu_precheck --workers 3 \
        --no-progress >/tmp/precheck.log 2>&1 &   # a hung precheck must not keep the studies from being packed
    pre=$!
fi
touch /tmp/run_study.start   # only files written from here on go back: a resumed study's old cells are already there
mains=() run_dirs=()
while (( $# )); do
    cfg=$1 run_dir=$2 workers=$3 cpus=$4; shift 4
    run_dirs+=("$run_dir")
    only_var="ONLY_${#run_dirs[@]}"
    set -f; only=(${!only_var-}); set +f   # patterns, not file names: no globbing here
    timeout -k 5 "$seconds" taskset -c "$cpus" python3 -m qsal.cli run "$cfg" --out "$run_dir" --workers "$workers" \
        ${only[@]+--only "${only[@]}"} --no-progress > "/tmp/study_${#run_dirs[@]}.log" 2>&1 &
    mains+=($!)
done
if ! wait $pre || grep -q "failed" /tmp/precheck.log; then
    echo "PRECHECK FAILED; stopping the studies"; cat /tmp/precheck.log
    grep -h -A30 '"traceback"' /tmp/gpu_precheck/*/*/*/*/error.json 2>/dev/null | head -60
    pkill -f "qsal.cli run" ; sleep 2; pkill -9 -f "qsal.cli run"
else
    echo "precheck passed"; tail -8 /tmp/precheck.log
fi
for m in "${mains[@]}"; do wait "$m"; echo "study pid $m exit $?"; done
pkill -f "qsal.cli run"; pkill -f multiprocessing; sleep 3; pkill -9 -f "qsal.cli run"   # workers a stopped parent left behind
for i in "${!run_dirs[@]}"; do
    d=${run_dirs[$i]}; echo "== $d: $(find "$d" -name result.json | wc -l) finished cells"; tail -5 "/tmp/study_$((i + 1)).log"
done
mkdir -p "$pack"; rm -f "$pack"/results.tgz.*   # parts of an earlier, larger pack would corrupt the rejoined one
find "${run_dirs[@]}" -type f -newer /tmp/run_study.start ! -name '*.safetensors' ! -name '*.onnx' ! -name last.pt \
    ! -name .qsal-run.lock > /tmp/results.list
# Weights too, when they fit (WEIGHTS_MB, default 60; the trip back holds 64 MiB in all): an unfinished cell's last.pt
# with its best.safetensors lets it resume mid-schedule, a finished parent's best.safetensors spares the CPU its
# retraining when a child still needs it; an unfinished cell's best.safetensors never goes alone (pick_weights.py
# says why and in which order). Small
# nets (edge_mbv2 0.35 MB, small_cnn 4.7 MB) fit; ResNet-18's 45 MB per cell: one.
# The cap is also what the trip's 64 MiB leaves beside the other files (weights barely compress).
room=$(( 67108864 - $(tar czf - -T /tmp/results.list | wc -c) - 1000000 ))
cap=$(( ${WEIGHTS_MB:-60} * 1000000 )); (( cap > room )) && cap=$room
python3 "$(dirname "$0")/pick_weights.py" "$cap" /tmp/run_study.start "${run_dirs[@]}" >> /tmp/results.list
echo "packing $(wc -l < /tmp/results.list) files written during the run (weights: up to $(( cap / 1000000 )) MB)"
tar czf /tmp/results.tgz -T /tmp/results.list
split -b 15M -d /tmp/results.tgz "$pack/results.tgz."
ls -la "$pack"
