#!/usr/bin/env bash
# The full fine-tuning evidence x4_evidence.sh could not finish (issues 6 and 7), planned for one
# nvidia-h100-x4 session (~25 min held). What x4_evidence.sh taught: a CPU-offload job on one GPU pair
# slowed a job on the other pair by up to 40% (host memory and PCIe are shared, pinning cores is not
# enough), so the search that is timed against a grid runs with no offload job beside it.
#   1. GPUs 0,1: the Qwen2-1.5B 2-GPU full fine-tuning search, timed against the committed grid
#      (results/grid-2xh100-qwen2-1.5b-full-T1024). Meanwhile GPUs 2 and 3 verify two committed
#      LoRA winners (GPU-bound, no offload): Llama-3-8B T=1024 and GLM-4 T=2048.
#   2. GPUs 0,1: that scenario's baselines (hand, HF auto, DeepSpeed's autotuner; their tokens/s are
#      read from the grid where it measured the same cell). At the same time, on GPUs 2,3: the GLM-4-9B
#      full fine-tuning search on two GPUs (BUDGET2, default 12m), whose planner now takes the walls
#      of DDP, ZeRO-2 and ZeRO-3 without offload from autofit estimate. Each pair is pinned to half
#      the cores.
# From the project root: source .wheels/setup.sh && bash benchmarks/full_ft_evidence.sh /tmp/ft
# Restartable: a finished step (steps.sh) is never run again.
set -uo pipefail
out=${1:?output folder}
here=$(dirname "$0")
mkdir -p "$out"
source "$here/steps.sh"
name=bench-2xh100-qwen2-1.5b-full-T1024
sc=(--model Qwen/Qwen2-1.5B --max-token 1024 --global-batch 32 --space full-zero --gpus 0,1)
( pin_half 0
  step "bench-$name" python3 -m benchmarks.search_vs_grid "${sc[@]}" --budget 8m \
    --grid-from results/grid-2xh100-qwen2-1.5b-full-T1024 --out "$out/$name" ) &
( pin_half 1; verify_copy verify-h100-llama3-8b-lora-T1024 bench-h100-llama3-8b-lora-T1024 2 ) &
( pin_half 1; verify_copy verify-h100-glm4-lora-T2048 bench-h100-glm4-lora-T2048 3 ) &
wait
( pin_half 0
  step "baselines-$name" python3 -m benchmarks.baselines "${sc[@]}" --only hand,hf-auto,ds-autotune \
    --ds-timeout "${DS_TIMEOUT:-480}" --out "$out/$name" ) &
( pin_half 1; BUDGET=${BUDGET2:-12m} bash "$here/multi_gpu_evidence.sh" "$out" 2,3 ) &
wait
echo "### $(date +%T) full_ft_evidence done" | tee -a "$out/steps.log"
touch "$out/DONE"
