#!/usr/bin/env bash
# Everything this toolkit does differently on a GPU, run once on a bare GPU node, in one go
# (doc/gpu.md). Installs nothing from the network: wheels in .whl/ (bench/gpu_wheels.sh
# downloads them elsewhere) are installed under a scratch folder when present.
#
#   bash bench/gpu_check.sh            # on a GPU node: <= 8 minutes on one H200 (the limits:
#                                      # 180 + 160 + 80 s, 40 s for the recipe's data, set-up ~20 s)
#   bash bench/gpu_check.sh --smoke    # the same phases on the CPU, tiny (what the tests run)
#
# Phases, each under its own `timeout` (one hang cannot eat the others' time):
#   setup   versions, nvidia-smi, wheels, which mpiexec works
#   pytest  pytest -m cuda (tests/test_cuda.py: every --cuda path against the CPU)
#   bench   bench/bench_gpu.py: ResNet-56, 50,000 CIFAR-shaped images resident on the device,
#           fp32/tf32/bf16 x eager/fused/K points per pass/compiled
#   recipe  the original's 2D recipe, mpiexec -n 1 plot_surface.py --mpi --cuda, ResNet-56
#           (released checkpoint), 5x5 grid, on CIFAR-format batches written here
# Output: $OUT when set, else ./gpu_out (8 files: gpu_check.log, summary.json, pytest.log,
# bench.log, bench.md, bench.json, recipe.log, recipe.json). Scratch files go to a temporary
# folder that is removed at the end.
set -u
cd "$(dirname "$0")/.."
SMOKE=${LL_GPU_CHECK_SMOKE:-0}
for a in "$@"; do
  case $a in
    --smoke) SMOKE=1 ;;
    *) echo "error: unknown argument $a; use --smoke or nothing" >&2; exit 2 ;;
  esac
done
O=${OUT:-./gpu_out}
mkdir -p "$O"
O=$(cd "$O" && pwd)
rm -f "$O"/{gpu_check.log,summary.json,pytest.log,bench.log,bench.md,bench.json,recipe.log,recipe.json}
S=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$S"' EXIT
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
T0=$(date +%s)
: >"$S/phases.tsv"

if [ "$SMOKE" = 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  CUDA=""; T_PYTEST=600; T_BENCH=600; T_RECIPE=600; T_PROBE=120
  PYTEST_SEL=(-k "test_surface_on_the_gpu_equals_the_cpu and digits_cnn and smoke")
  BENCH=(--smoke)
  N_TRAIN=300; N_TEST=100; GRID=(--x=-1:1:3 --y=-1:1:3); MODEL=(--model resnet20)
else
  CUDA="--cuda"; T_PYTEST=180; T_BENCH=160; T_RECIPE=80; T_PROBE=30
  PYTEST_SEL=(-k "not smoke")
  # pytest-xdist (on the H200 image): 4 workers share the GPU and the CPU references
  "$PY" -c "import xdist" 2>/dev/null && PYTEST_SEL+=(-n 4)
  "$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_SEL+=(--timeout 150)  # one hang: one test
  BENCH=(--images 50000 --timed_images 10000 --points 2 --rounds 1 --budget 130)
  N_TRAIN=50000; N_TEST=10000; GRID=(--x=-1:1:5 --y=-1:1:5)
  MODEL=(--model resnet56 --model_file "tests/compat/resnet56_sgd_lr=0.1_bs=128_wd=0.0005_model_300.t7")
fi

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$O/gpu_check.log"; }

phase() {  # phase NAME LIMIT_S LOGFILE CMD...: run under timeout, record rc and seconds
  local name=$1 limit=$2 logf=$3 t rc
  shift 3
  log "phase $name (limit ${limit} s): $*"
  t=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$logf" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t ))" "$limit" >>"$S/phases.tsv"
  log "phase $name: exit $rc after $(( $(date +%s) - t )) s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
  tail -n 25 "$logf" | sed "s/^/  $name| /"
  return $rc
}

# ------------------------------------------------------------------ setup
log "smoke=$SMOKE out=$O repo=$(pwd) commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{
  echo "== date"; date -u
  echo "== uname"; uname -a
  echo "== python"; command -v "$PY"; "$PY" --version
  echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  echo "== nvidia-smi query"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || true
} >>"$O/gpu_check.log" 2>&1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  log "installing the wheels of .whl/ under $S (no index)"
  PIP=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade)
  others=$(ls .whl/*.whl | grep -v -e '/mpich-' -e '/mpi4py-' || true)
  [ -n "$others" ] && { "${PIP[@]}" --target "$S/site" $others >>"$O/gpu_check.log" 2>&1 || log "wheel install failed"; }
  ls .whl/mpi4py-*.whl >/dev/null 2>&1 && { "${PIP[@]}" --target "$S/site_mpi" .whl/mpi4py-*.whl >>"$O/gpu_check.log" 2>&1 || log "mpi4py wheel install failed"; }
  ls .whl/mpich-*.whl >/dev/null 2>&1 && { "${PIP[@]}" --ignore-installed --prefix "$S/mpich" .whl/mpich-*.whl >>"$O/gpu_check.log" 2>&1 || log "mpich wheel install failed"; }
  [ -d "$S/site" ] && export PYTHONPATH="$S/site${PYTHONPATH:+:$PYTHONPATH}"
fi

timeout -k 5 60 "$PY" - >>"$O/gpu_check.log" 2>&1 <<'EOF'
import importlib, sys
import torch
print("== torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
      torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
      "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    print("== device", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0))
for m in ("numpy", "h5py", "mpi4py", "matplotlib", "scipy", "sklearn", "tqdm", "plotly", "pytest",
          "pytest_timeout", "triton", "torchvision"):
    try:
        mod = importlib.import_module(m)
        print(f"== {m} {getattr(mod, '__version__', '?')} {getattr(mod, '__file__', '')}")
    except Exception as e:
        print(f"== {m} MISSING ({type(e).__name__}: {e})")
EOF

mpi_ok() {  # mpi_ok MPIEXEC: two ranks that see each other
  timeout -k 5 "$T_PROBE" "$1" -n 2 "$PY" -c "from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 2" \
    >>"$O/gpu_check.log" 2>&1
}
MPIEXEC=""
if command -v mpiexec >/dev/null 2>&1 && mpi_ok mpiexec; then
  MPIEXEC=$(command -v mpiexec)
elif [ -x "$S/mpich/bin/mpiexec" ]; then
  export MPI4PY_LIBMPI="$S/mpich/lib/libmpi.so.12"
  [ -d "$S/site_mpi" ] && export PYTHONPATH="$S/site_mpi:${PYTHONPATH:-}"
  mpi_ok "$S/mpich/bin/mpiexec" && MPIEXEC="$S/mpich/bin/mpiexec"
fi
if [ -n "$MPIEXEC" ]; then
  export MPIEXEC PATH="$(dirname "$MPIEXEC"):$PATH"
  log "mpiexec: $MPIEXEC ($("$MPIEXEC" --version 2>&1 | grep -i -m 1 -E 'version|open mpi' | tr -s ' '))"
else
  log "no working mpiexec (mpi4py + an MPI): the MPI test skips, the recipe runs without MPI"
fi

# ------------------------------------------------------------------ pytest -m cuda
# -v: one line per test as it ends, so a run cut off by the phase's limit still says what passed
phase pytest "$T_PYTEST" "$O/pytest.log" "$PY" -m pytest -m cuda -v -rs --durations=10 -p no:cacheprovider \
  --continue-on-collection-errors "${PYTEST_SEL[@]}" tests

# ------------------------------------------------------------------ bench_gpu.py
phase bench "$T_BENCH" "$O/bench.log" "$PY" bench/bench_gpu.py "${BENCH[@]}" --out "$O/bench.md" --json "$O/bench.json"

# ------------------------------------------------------------------ the original's 2D recipe
timeout -k 5 40 "$PY" -c "import sys; sys.path[:0] = ['tests']; from conftest import write_cifar_batches as w; w('$S/data', $N_TRAIN, $N_TEST)" \
  >>"$O/gpu_check.log" 2>&1 || log "could not write the CIFAR-format batches"
RECIPE=(plot_surface.py "${MODEL[@]}" "${GRID[@]}" --dir_type weights --xnorm filter --xignore biasbn
        --ynorm filter --yignore biasbn --plot --datapath "$S/data" --surf_file "$S/recipe.h5"
        --dir_file "$S/recipe_dir.h5" --no_progress)
if [ -n "$MPIEXEC" ]; then
  phase recipe "$T_RECIPE" "$O/recipe.log" "$MPIEXEC" -n 1 "$PY" "${RECIPE[@]}" --mpi $CUDA
else
  phase recipe "$T_RECIPE" "$O/recipe.log" "$PY" "${RECIPE[@]}" $CUDA
fi
"$PY" - "$S/recipe.h5" "$O/recipe.log" "$O/recipe.json" "$MPIEXEC" <<'EOF' >>"$O/gpu_check.log" 2>&1
import json, re, sys
import h5py
surf, logf, out, mpiexec = sys.argv[1:]
r = {"mpiexec": mpiexec or None, "surf_file_read": False}
try:
    text = open(logf).read()
    m = re.search(r"timing: (\d+) points in ([\d.]+) s, ([\d.]+) s per point, (.*)", text)
    if m:
        r.update(points=int(m.group(1)), grid_seconds=float(m.group(2)), s_per_point=float(m.group(3)),
                 timing_line=m.group(0), projected_51x51_min=float(m.group(3)) * 2601 / 60)
    with h5py.File(surf, "r") as f:
        r.update(surf_file_read=True, train_loss=f["train_loss"][()].tolist(), train_acc=f["train_acc"][()].tolist(),
                 done=bool(f["done"][()].all()))
except Exception as e:
    r["error"] = f"{type(e).__name__}: {e}"
json.dump(r, open(out, "w"), indent=1)
print("recipe:", json.dumps({k: v for k, v in r.items() if k not in ("train_loss", "train_acc")}))
EOF

# ------------------------------------------------------------------ summary
"$PY" - "$S/phases.tsv" "$O/summary.json" "$SMOKE" "$MPIEXEC" "$T0" <<'EOF' 2>&1 | tee -a "$O/gpu_check.log"
import json, subprocess, sys, time
import torch
tsv, out, smoke, mpiexec, t0 = sys.argv[1:]
phases = {}
for line in open(tsv):
    name, rc, sec, limit = line.rstrip("\n").split("\t")
    phases[name] = {"rc": int(rc), "seconds": int(sec), "limit_s": int(limit), "timed_out": rc in ("124", "137")}
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except Exception:
    smi = None
s = {"smoke": smoke == "1", "phases": phases, "all_passed": all(p["rc"] == 0 for p in phases.values()),
     "total_seconds": int(time.time()) - int(t0), "mpiexec": mpiexec or None, "torch": torch.__version__,
     "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "nvidia_smi": smi}
json.dump(s, open(out, "w"), indent=1)
print(json.dumps(s))
EOF
log "done in $(( $(date +%s) - T0 )) s; results in $O"
