#!/usr/bin/env bash
# GPU readiness check: on a CUDA machine, set up, run the architecture matrix and the conformance suite on the GPU
# (fp32: identical to plain generate; bf16 and fp16: identical up to near-ties, docs/models.md "Precision"), then a
# short benchmark (ngram and eagle vs plain generate on SmolLM2, greedy, K=3/5/7, trees of 8/24/40 nodes), and
# write everything to one results file: $OUT/gpu_check.md if $OUT is set, else results/gpu_check.md.
# Without a CUDA device it says so and exits 0.
#
#   bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False, or no torch): skipped"
    exit 0
fi
RESULTS_DIR=${OUT:-results}
mkdir -p "$RESULTS_DIR"
RESULTS="$RESULTS_DIR/gpu_check.md"

# Set up in a virtual environment that sees the interpreter's CUDA build of torch (scripts/setup.sh would install
# the CPU wheel into a fresh one).
if [ ! -x .venv-gpu/bin/python ]; then
    "$PYTHON" -m venv --system-site-packages .venv-gpu
fi
PY=.venv-gpu/bin/python
$PY -m pip install -q --no-build-isolation -e ".[gguf,test]" -e plugins/ngram -e plugins/draft_model -e plugins/eagle \
    || $PY -m pip install -q --no-deps --no-build-isolation -e . -e plugins/ngram -e plugins/draft_model -e plugins/eagle

{
    echo "# specdecode GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
    $PY -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')"
    echo
} > "$RESULTS"

status=0
for dtype in float32 bfloat16 float16; do
    echo "## matrix and conformance on cuda, $dtype" >> "$RESULTS"
    tests="tests/test_architectures.py tests/test_precision.py"
    [ "$dtype" = float32 ] && tests="$tests tests/test_conformance_builtin.py"
    SPECDECODE_TEST_DEVICE=cuda SPECDECODE_TEST_DTYPE=$dtype SPECDECODE_STRICT_PLUGINS=1 \
        $PY -m pytest -q -p no:cacheprovider $tests 2>&1 | tail -n 15 | sed 's/^/    /' >> "$RESULTS"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    echo >> "$RESULTS"
done

echo "## benchmark: SmolLM2-135M-Instruct, bf16, greedy" >> "$RESULTS"
$PY benchmarks/bench_gpu.py --device cuda --dtype bfloat16 --json "$RESULTS_DIR/gpu_bench.json" 2>/dev/null \
    | sed 's/^/    /' >> "$RESULTS" || status=1

cat "$RESULTS"
exit $status
