#!/usr/bin/env bash
# Ray small enough to travel to the GPU machine (64 MiB cap): the wheel unpacked without ray/jars,
# ray/rllib, ray/serve and ray/dashboard/client, stripped and packed with xz -9 (19.6 MB for
# cp311 here; the binaries are most of it), plus the
# wheels of its few dependencies that a bare machine lacks.
#
#     bash bench/ray_trim.sh pack OUT [PYVER]   # OUT/ray-trimmed.tar.xz and OUT/wheels/ (PYVER: 3.12 default)
#     bash bench/ray_trim.sh check OUT          # on this machine: unpack it, start a local Ray with the
#                                               # dashboard off and run a 2-trial hps study on it
#
# On the GPU machine: `tar -xJf ray-trimmed.tar.xz -C /tmp/ray && pip install --no-index wheels/*.whl`
# and PYTHONPATH=/tmp/ray (bench/gpu.sh does it when it finds them under shared/).
set -euo pipefail
cmd=$1 out=$2 pyver=${3:-3.12}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
version=$("$py" -c 'import importlib.metadata as m; print(m.version("ray"))')
case $cmd in
pack)
  mkdir -p "$out/wheels" && tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
  "$py" -m pip download -q "ray==$version" --no-deps --only-binary=:all: --python-version "$pyver" \
    --platform manylinux2014_x86_64 -d "$tmp"
  (cd "$tmp" && unzip -q ray-*.whl -d site && rm -rf site/ray/jars site/ray/rllib site/ray/serve site/ray/dashboard/client)
  # unzip keeps the executables' mode; their symbol tables are a third of their bytes
  strip --strip-unneeded "$tmp/site/ray/_raylet.so" "$tmp/site/ray/core/src/ray/gcs/gcs_server" \
    "$tmp/site/ray/core/src/ray/raylet/raylet"
  tar -C "$tmp/site" -c . | xz -9 -T0 > "$out/ray-trimmed.tar.xz"
  # the dependencies Ray declares (its core extra none): pure-Python or manylinux wheels for PYVER
  "$py" -m pip download -q click filelock jsonschema msgpack packaging protobuf pyyaml requests \
    --only-binary=:all: --python-version "$pyver" --platform manylinux2014_x86_64 -d "$out/wheels"
  du -sh "$out/ray-trimmed.tar.xz" "$out/wheels"
  ;;
check)
  site=$(mktemp -d) db=$(mktemp -d)
  trap 'rm -rf "$site" "$db"' EXIT
  tar -C "$site" -xJf "$out/ray-trimmed.tar.xz"
  export PYTHONPATH="$site:$repo/src"
  "$py" -c 'import ray, sys; assert ray.__file__.startswith(sys.argv[1]), ray.__file__; print("ray", ray.__version__, "from", ray.__file__)' "$site"
  cd "$db"
  "$py" -m hps run "$repo/spaces/quickstart.yaml" --ray local --workers 2 --trials 2 --storage "sqlite:///$db/hps.db" \
    --set fixed.train.epochs=1 --set budget.max_epochs=1 --set fixed.data.subset=500 --set study.name=ray_trim_check
  "$py" - "$db/hps.db" <<'EOF'
import sys, optuna
s = optuna.load_study(study_name="ray_trim_check", storage=f"sqlite:///{sys.argv[1]}")
states = [t.state.name for t in s.trials]
assert states.count("COMPLETE") + states.count("PRUNED") == 2, states
print("trimmed Ray ran the study:", states)
EOF
  ;;
*) echo "usage: bash bench/ray_trim.sh pack|check OUT [PYVER]" >&2; exit 2 ;;
esac
