#!/usr/bin/env bash
# The GPU session's one script: what only a GPU can show, as JSON under OUT (BENCHMARKS.md quotes
# it). Run from the repository root on a machine with one CUDA GPU:
#     bash bench/gpu.sh OUT MINI.npz [AIRBENCH_DIR]
# hps runs from the checkout (PYTHONPATH=src) on the machine's own torch; airbench's train94 (the
# package, KellerJordan/cifar10-airbench) is the baseline where AIRBENCH_DIR holds it. The mini set
# is tiled to 50,000 images (timings do not depend on which images). About 8 minutes on an H200;
# each part has its own time limit, so one that hangs leaves the others' figures.
#
# Issue 29's parts (run with PARTS="ray graphs reports" to spend the device's minutes on them alone):
#   CIFAR_TAR=path/to/cifar10-jpeg.tar.xz  the whole CIFAR-10 as JPEG folders: bench/reports.py on it
#   RAY_BUNDLE=DIR                         DIR/ray-trimmed.tar.xz and DIR/wheels from `bench/ray_trim.sh pack DIR`,
#                                          used when the machine has no Ray
set -u
parts=${PARTS:-"base ray graphs reports"}
want() { [[ " $parts " == *" $1 "* ]]; }
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
if want base; then
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
fi
if want ray; then
  step ray
  if ! python3 -c "import ray" 2>/dev/null && [ -n "${RAY_BUNDLE:-}" ]; then
    mkdir -p /tmp/ray-site && tar -C /tmp/ray-site -xJf "$RAY_BUNDLE/ray-trimmed.tar.xz"
    python3 -m pip install -q --no-index --find-links "$RAY_BUNDLE/wheels" click filelock jsonschema msgpack packaging \
      protobuf pyyaml requests 2>&1 | tail -2
    export PYTHONPATH="$PYTHONPATH:/tmp/ray-site"
  fi
  timeout 240 python3 bench/gpu.py ray --per-gpu 1,4 --trials 8 --epochs 1 2>&1 | tee "$out/ray.jsonl"
fi
if want graphs; then
  step graphs  # CUDA graphs (compile_mode reduce-overhead) against eager on airbench's recipe
  timeout 150 python3 bench/gpu.py graphs --runs 2 2>&1 | tee "$out/graphs.jsonl"
fi
if want reports && [ -n "${CIFAR_TAR:-}" ]; then
  step reports  # the reports' question on the whole CIFAR-10, real images, real test split
  mkdir -p /tmp/c10 && tar -xJf "$CIFAR_TAR" -C /tmp/c10
  timeout 330 python3 bench/reports.py --report airnet --report 001 --data /tmp/c10 --search-seconds 100 \
    --epochs 8 --retrain-epochs 16 --storage sqlite:////tmp/reports.db --out "$out/reports" 2>&1 | tail -40
fi
step done
