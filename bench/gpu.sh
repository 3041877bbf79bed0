#!/usr/bin/env bash
# The GPU session's one script: what only a GPU can show, as JSON under OUT (BENCHMARKS.md quotes
# it). Run from the repository root on a machine with one CUDA GPU:
#     bash bench/gpu.sh OUT MINI.npz [AIRBENCH_DIR]
# hps runs from the checkout (PYTHONPATH=src) on the machine's own torch; airbench's train94 (the
# package, KellerJordan/cifar10-airbench) is the baseline where AIRBENCH_DIR holds it. The mini set
# is tiled to 50,000 images (timings do not depend on which images). About 8 minutes on an H200;
# each part has its own time limit, so one that hangs leaves the others' figures.
set -u
out=$1 mini=$2 airbench=${3:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}${airbench:+:$airbench}"
export HPS_ARTIFACTS=/tmp/hps-art HPS_DATA=/tmp/c50k.npz
step() { echo "== $1 $(date +%T)"; }
step env
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, torchvision, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torchvision.__version__)"
  nproc; } 2>&1 | tee "$out/env.txt"
python3 bench/gpu.py tile "$mini" /tmp/c50k.npz --times 10 || exit 1
step trainer-bench
# floor and hps interleaved on their own: a small net's step is bound by the host launching its
# kernels, and the DataLoader's worker processes slow whatever runs beside them; then the DataLoader
for m in "airnet 1.0 1024" "resnet18 1.0 512"; do
  set -- $m
  timeout 100 python3 bench/trainer.py --model "$1" --width "$2" --batch "$3" --precision bf16 --device cuda \
    --epochs 2 --rounds 5 --methods floor,hps 2>&1 | tee "$out/trainer-$1.json"
  timeout 60 python3 bench/trainer.py --model "$1" --width "$2" --batch "$3" --precision bf16 --device cuda \
    --epochs 2 --rounds 1 --methods floor,dataloader --workers 12 2>&1 | tee -a "$out/trainer-$1.json"
done
timeout 60 python3 bench/gpu.py profile --model airnet --batch 1024 --rounds 3 --out "$out" 2>&1 | grep '^{' | tee "$out/profile.jsonl"
step airbench
[ -n "$airbench" ] && timeout 120 python3 bench/gpu.py airbench --runs 3 2>&1 | tee "$out/airbench.jsonl"
step study
timeout 170 python3 bench/gpu.py study --procs 1,2,4 --trials 8 --epochs 1 --out "$out" 2>&1 | tee "$out/study.jsonl"
step checks
timeout 150 python3 bench/gpu.py checks 2>&1 | tee "$out/checks.jsonl"
step done
