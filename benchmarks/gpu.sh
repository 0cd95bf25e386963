#!/usr/bin/env bash
# Everything issue 17 measures on a GPU, in one command, from the repository root of a GPU machine:
#
#     bash benchmarks/gpu.sh OUT        # OUT: a folder for the results (default benchmarks/out/gpu)
#     bash benchmarks/gpu.sh OUT --dry-run   # the same steps on a CPU at tiny sizes, to check this script
#
# It uses the machine's own Python (PYTHON, default python3) and installs nothing from the network:
# torch with CUDA, accelerate, safetensors, numpy, tqdm, torchvision, pytest and scikit-learn must be
# there already (they are on this workplace's GPU image); a missing one is named and the run stops.
# fitorch itself is installed from this checkout (pip, editable, no index, no dependencies).
#
# Writes to OUT: setup.log (versions, nvidia-smi, the install), gpu.json and gpu.md (benchmarks/gpu.py:
# every figure, the report), gpu.log (its output), tests.log (pytest tests/test_gpu.py). About five
# minutes on an H200. The exit status is non-zero if the benchmark or a GPU test failed.
set -uo pipefail

OUT="${1:-benchmarks/out/gpu}"
DRY_RUN="${2:-}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

{
    echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON")"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 || echo "nvidia-smi: not available"
} >"$OUT/setup.log"

# What the run needs, checked before anything runs, each reported with its version.
DRY_RUN="$DRY_RUN" "$PYTHON" - >>"$OUT/setup.log" 2>&1 <<'EOF'
import importlib, os, sys
needed = ["torch", "accelerate", "safetensors", "numpy", "tqdm", "torchvision", "pytest", "sklearn"]
missing = []
for name in needed:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:
        missing.append(f"{name} ({type(error).__name__}: {error})")
if missing:
    print("MISSING: " + "; ".join(missing) + ". Carry them as wheels (see /work/.library/device/README.md).")
    sys.exit(3)
import torch
print(f"cuda available: {torch.cuda.is_available()}; torch.version.cuda {torch.version.cuda}")
if not torch.cuda.is_available() and os.environ["DRY_RUN"] != "--dry-run":
    print("NO CUDA DEVICE: this script measures a GPU; on a CPU use python benchmarks/gpu.py --dry-run.")
    sys.exit(4)
print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU (dry run)'}")
EOF
status=$?
if [ "$status" -ne 0 ]; then
    cat "$OUT/setup.log"
    exit "$status"
fi

# fitorch from this checkout, without touching the network or the installed packages.
if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . >>"$OUT/setup.log" 2>&1; then
    # The installed package maps fitorch.callbacks to callbacks/; a link in this copy of the tree does the same.
    echo "pip install -e . failed (above); using PYTHONPATH and a fitorch/callbacks link instead" >>"$OUT/setup.log"
    if [ ! -e fitorch/callbacks ]; then
        ln -s ../callbacks fitorch/callbacks
        trap 'rm -f fitorch/callbacks' EXIT
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import fitorch, fitorch.callbacks; print('fitorch', fitorch.__version__, 'from', fitorch.__file__)" \
    >>"$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 5; }
cat "$OUT/setup.log"

# The figures (about three minutes), then the GPU tests (about a minute); each bounded in time.
timeout 360 "$PYTHON" benchmarks/gpu.py $DRY_RUN --output "$OUT/gpu.json" >"$OUT/gpu.log" 2>&1
bench=$?
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    >"$OUT/tests.log" 2>&1
tests=$?

# The reply shows the end of the output: the report's goal table, then the tests' verdict.
if [ -f "$OUT/gpu.md" ]; then
    sed -n '/^| goal (issue 17)/,/^$/p' "$OUT/gpu.md"
else
    tail -n 40 "$OUT/gpu.log"
fi
grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed|skipped|errors?)( |$)" "$OUT/tests.log" | tail -n 25
echo "gpu.py exit $bench, pytest exit $tests; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
[ "$bench" -eq 0 ] && [ "$tests" -eq 0 ]
