#!/usr/bin/env bash
# The GPU checks in one script, for a machine with one CUDA device (CI has none): the tests
# that need a device (torch CUDA and CuPy backends, SENG on CUDA, fp16 autocast), the CUDA
# rows of the benchmarks, a one-rank NCCL training run per data-parallel mode, then the whole
# suite with the device visible. The logs are packed into $OUT/gpu_logs.tgz (default
# out/gpu_logs.tgz). Install what is missing first (array-api-compat at least), then run from
# the repository root: bash benchmarks/gpu_checks.sh
set -u
dest=${OUT:-$PWD/out}
out=$(mktemp -d)/gpu
mkdir -p "$out" "$dest"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=python3
step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s"
    tail -n 12 "$out/$name.log"
}
step env 60 bash -c "nvidia-smi -L; $py -c 'import sys, numpy, torch, cupy; \
print(sys.version.split()[0], \"numpy\", numpy.__version__, \"torch\", torch.__version__, \
\"cupy\", cupy.__version__, torch.cuda.get_device_name())'"
step tests_gpu 240 $py -m pytest -q -p no:cacheprovider -n 8 -k "cuda or cupy" tests
step bench_seng 120 $py benchmarks/bench_seng.py --device cuda
step bench_rsvd 150 $py benchmarks/bench_rsvd.py --device cuda
step bench_sketch_torch 120 $py benchmarks/bench_sketch.py --backend torch --device cuda
step bench_sketch_cupy 120 $py benchmarks/bench_sketch.py --backend cupy
for mode in global global-sharded local; do  # sharding applies to sketched layers only
    step "nccl_$mode" 120 torchrun --standalone --nproc_per_node 1 -m seng.train --device cuda \
        --epochs 2 --optimizers sgd,seng --dist-mode "$mode" --sketch countsketch \
        --no-progress --out "$out/train_$mode"
done
step tests_all 300 $py -m pytest -q -p no:cacheprovider -n 16 -m 'not slow' tests
tar czf "$dest/gpu_logs.tgz" -C "$(dirname "$out")" gpu
