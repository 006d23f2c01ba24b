#!/usr/bin/env bash
# A/B of the OpenMP threads a rank's CPU Adam gets under torchrun (issue 6): the same one-cell search
# (Qwen2-1.5B full fine-tuning, ZeRO-3 + offload_optimizer, micro-batch 8, 2 GPUs) run with
# OMP_NUM_THREADS=1, what torchrun imposes on every rank when it is unset (all multi-GPU probes until
# this fix), then with it unset, where autofit gives each rank its share of the cores. Same machine,
# same call; the CPU Adam JIT is built before either. From the project root, on nvidia-h100-x2 or
# nvidia-h200-x2: source .wheels/setup.sh && bash benchmarks/omp_offload.sh /tmp/omp
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
source "$(dirname "$0")/steps.sh"
step warm-up python3 -c "from benchmarks.search_vs_grid import warm_up; print(warm_up(True))"
args=(--model Qwen/Qwen2-1.5B --max-token 1024 --global-batch 16 --gpus 0,1 --space benchmarks/spaces/offload-z3-mb8.yaml --budget 5m)
OMP_NUM_THREADS=1 step omp1 python3 -m autofit search "${args[@]}" --run-dir "$out/omp1"
step omp-share python3 -m autofit search "${args[@]}" --run-dir "$out/omp-share"
python3 - "$out" <<'PY' | tee "$out/omp_offload.txt"
import csv, os, sys
print(f"{os.cpu_count()} cores; Qwen2-1.5B full FT, ZeRO-3 + offload_optimizer, mb 8, T=1024, 2 GPUs")
for name in ("omp1", "omp-share"):
    for r in csv.DictReader(open(os.path.join(sys.argv[1], name, "probes.csv"))):
        print(f"{name:10s} {r['strategy']} mb={r['micro_batch']}: {r['status']}, {float(r['tokens_per_s'] or 0):.0f} tokens/s, "
              f"step {float(r['step_s'] or 0):.2f} s of which optimizer {float(r['optimizer_step_s'] or 0):.2f} s, {r['device_name']}")
PY
touch "$out/DONE"
