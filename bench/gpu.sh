#!/usr/bin/env bash
# GPU inference benchmark, run ONCE on a lent NVIDIA H100/H200 host; self-contained, < 7 minutes.
#
#   MASKWATCH_MODELS_DIR=<folder with manifest.json + ONNX models>  (required)
#   MW_GPU_IMAGES=<folder with ~32 dataset JPEGs>                    (required; the dataset is not there)
#   MW_GPU_DATASET=<held-out photos + VOC annotations>               (optional: accuracy on the GPU vs CPU)
#   OUT=<results folder>          (default bench/results/gpu)
#   PYTHON=<interpreter>          (default /opt/torch/.venv/bin/python3, else python3)
#   PYTHONPATH may already name onnxruntime-gpu's folder (e.g. /tmp/site): it is kept, first.
#
# Writes under $OUT: nvidia-smi.txt, gpu_infer.log, gpu.json, pytest_gpu.log, table.txt; prints the
# compact table last. A missing package or provider is reported, never fatal.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-/opt/torch/.venv/bin/python3}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-$PWD/bench/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
: "${MASKWATCH_MODELS_DIR:?set MASKWATCH_MODELS_DIR to the models folder (manifest.json + *.onnx)}"
: "${MW_GPU_IMAGES:?set MW_GPU_IMAGES to a folder of dataset JPEGs}"
t0=$(date +%s)

{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; } \
  >"$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/nvidia-smi.txt"
echo "python: $PY ($("$PY" -V 2>&1)); nproc $(nproc)"

# The GPU-marked tests first (skipped elsewhere), at most 90 s: what the GPU path does right is worth more
# than one more figure if the bench runs out of time.
if [ -f tests/test_inference_gpu.py ]; then
  timeout 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_inference_gpu.py 2>&1 \
    | tee "$OUT/pytest_gpu.log"
else
  echo "gpu tests not run (tests/test_inference_gpu.py missing)" | tee "$OUT/pytest_gpu.log"
fi

# Inference at 1024x1024, batch 1..64, CUDA fp16 (then the flow's decode+engine loop in 1 and 4
# processes, and accuracy) / CUDA fp32 / TensorRT / CPU; stops starting new measurements after --budget-s
# so the whole script ends within 7 minutes.
left=$(( 410 - ($(date +%s) - t0) ))
timeout "$left" "$PY" -m bench.gpu_infer --out "$OUT" --budget-s $(( left - 110 )) 2>&1 | tee "$OUT/gpu_infer.log"

echo
if [ -f "$OUT/gpu.json" ]; then
  "$PY" -m bench.gpu_infer --table "$OUT/gpu.json" | tee "$OUT/table.txt"
else
  echo "no $OUT/gpu.json: see $OUT/gpu_infer.log" | tee "$OUT/table.txt"
fi
echo "gpu.sh: $(( $(date +%s) - t0 )) s; results in $OUT"
