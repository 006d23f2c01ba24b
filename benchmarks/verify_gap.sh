#!/usr/bin/env bash
# Why did `autofit verify` of the 2 x H200 GLM-4 full fine-tuning winner (ckpt/z2, micro-batch 2)
# peak 6.2% above its probe (134.1 against 126.3 GiB, reserved 131.4 against 123.6)? The search
# measures one optimizer step after one warm-up step; verify trains 12 through HF Trainer. This probes
# the same cell in autofit's own worker with 1, then 10 measured steps: if the peak grows with steps,
# the allocator grows over a run and a one-step probe under-reports it; if not, the gap is HF Trainer's.
# nvidia-h200-x2 (the winner's machine kind), ~4 min: source .wheels/setup.sh && bash benchmarks/verify_gap.sh /tmp/gap
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
source "$(dirname "$0")/steps.sh"
cell=(--model THUDM/glm-4-9b-chat --method full --precision bf16 --grad-ckpt --zero 2 --gpus 0,1
      --global-batch 16 --max-token 1024 --micro-batch 2 --warmup-steps 1)
step steps1 python3 -m autofit probe "${cell[@]}" --measure-steps 1 --out "$out/probes.csv"
step steps10 python3 -m autofit probe "${cell[@]}" --measure-steps 10 --out "$out/probes.csv"
cut -d, -f1-20 "$out/probes.csv" | tee "$out/verify_gap.txt"
touch "$out/DONE"
