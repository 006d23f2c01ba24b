#!/usr/bin/env bash
# Issues 6 and 7 on one nvidia-h100-x4 machine, within one session's ~30 min of device time:
#   1. GLM-4-9B-chat full fine-tuning search on all four GPUs (multi_gpu_evidence.sh, BUDGET4, 4m);
#   2. then two jobs at once, each on two GPUs and pinned to half the CPU cores (CPU Adam under offload
#      is CPU-bound, so unpinned jobs would slow each other by an amount nobody measured):
#      GPUs 2,3: the same search on two GPUs (BUDGET2, 8m): the issue-6 walls and winner;
#      GPUs 0,1: the Qwen2-1.5B full fine-tuning scenario (issue 7): grid, search, hand, HF auto,
#                then DeepSpeed's autotuner. It takes GPUs 0,1 because the autotuner numbers its
#                experiments' GPUs from 0, whatever CUDA_VISIBLE_DEVICES says.
# From the project root: source .wheels/setup.sh && bash benchmarks/x4_evidence.sh /tmp/x4
# Restartable like the scripts it calls (steps.sh): a finished step is never run again.
set -uo pipefail
out=${1:?output folder}
here=$(dirname "$0")
mkdir -p "$out"
source "$here/steps.sh"

BUDGET=${BUDGET4:-4m} bash "$here/multi_gpu_evidence.sh" "$out" 0,1,2,3

name=bench-2xh100-qwen2-1.5b-full-T1024
qwen() {
  BASELINES=hand,hf-auto bash "$here/scenario_evidence.sh" "$out" "$name" Qwen/Qwen2-1.5B 1024 --space full-zero --gpus 0,1
  step "ds-$name" python3 -m benchmarks.baselines --model Qwen/Qwen2-1.5B --max-token 1024 --global-batch 32 \
    --space full-zero --gpus 0,1 --only ds-autotune --ds-timeout "${DS_TIMEOUT:-480}" --out "$out/$name"
}
( pin_half 0; qwen ) &
( pin_half 1; BUDGET=${BUDGET2:-8m} bash "$here/multi_gpu_evidence.sh" "$out" 2,3 ) &
wait
echo "### $(date +%T) x4 done" | tee -a "$out/steps.log"
touch "$out/DONE"
