#!/usr/bin/env bash
# Issue 18 smoke test on one GPU: the fused loss, NF4 base weights and the 8-bit optimizer trained by
# real probes, then the GPU tests of tests/test_techniques_gpu.py. About 5 minutes on an H200.
# On the GPU machine, from the project root (device run with carry: [".wheels"]):
#   source .wheels/setup.sh && bash benchmarks/gpu_smoke_18.sh $OUT [all|probes|tests]
# (probes: only the CLI probes, ~2.5 min; tests: only pytest -m gpu, ~2.5 min; all: both.)
# Writes probes.csv (one row per probe), probe.log, pytest.log and summary.txt into the given folder.
# What to look for: GLM-4-9B at T=2048 under 24 GiB reaches a larger micro-batch with the fused loss
# than without, and a larger one still (about 8, ~19 GiB) with NF4 + fused; every pytest case passes.
set -uo pipefail
out=${1:?output folder}
what=${2:-all}
mkdir -p "$out"
csv="$out/probes.csv"
log="$out/probe.log"
fails=0
run() {
  echo "### autofit probe $*" | tee -a "$log"
  python3 -m autofit probe --out "$csv" "$@" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || fails=$((fails + 1))
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

if [ "$what" != tests ]; then
  glm="--model THUDM/glm-4-9b-chat --max-token 2048 --gpu-memory 24GiB --micro-batch 1,2,4,8"
  run $glm --grad-ckpt                                  # (a) LoRA, bf16 base weights, HF's loss
  run $glm --grad-ckpt --loss fused                     # (b) the same with liger's fused cross-entropy
  run $glm --no-grad-ckpt --quant nf4 --loss fused      # (c) QLoRA: NF4 base weights + fused loss
  # Full fine-tuning of a small model with bitsandbytes' AdamW8bit (the GPU tests compare it with torch AdamW).
  run --model Qwen/Qwen2-0.5B --method full --max-token 512 --micro-batch 1,4 --optim adamw8bit
fi

if [ "$what" != probes ]; then
  if python3 -c "import pytest" 2>/dev/null; then
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_techniques_gpu.py 2>&1 | tee "$out/pytest.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || fails=$((fails + 1))
  else
    echo "pytest is not installed here: rebuild the wheels with EXTRA_WHEELS='pytest iniconfig pluggy packaging'" | tee "$out/pytest.log"
    fails=$((fails + 1))
  fi
fi

[ -f "$csv" ] && python3 - "$csv" <<'PY' | tee "$out/summary.txt"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{'strategy':48s} {'mb':>3s} {'status':7s} {'tok/s':>9s} {'alloc GiB':>9s} {'nvml GiB':>9s}")
for r in rows:
    gib = lambda k: f"{int(r[k]) / 2**30:9.2f}" if r.get(k) else f"{'-':>9s}"
    tps = f"{float(r['tokens_per_s']):9.0f}" if r.get("tokens_per_s") else f"{'-':>9s}"
    print(f"{r['strategy']:48s} {r['micro_batch']:>3s} {r['status']:7s} {tps} {gib('peak_allocated')} {gib('nvml_peak')}")
PY
echo "failed steps: $fails" | tee -a "$out/summary.txt"
exit "$fails"
