#!/usr/bin/env bash
# The full fine-tuning evidence for one nvidia-h100-x2 session (~25 min held), when no 4-GPU kind is
# lent (full_ft_evidence.sh is the 4-GPU version of the same plan). Both GPUs, one job at a time: a
# CPU-offload job beside a timed job slowed it by up to 40% (x4_evidence.sh), so nothing runs beside.
#   1. Issue 6: the GLM-4-9B-chat full fine-tuning search on GPUs 0,1 (BUDGET, default 10m), after
#      the CPU Adam JIT build (a one-time cost per machine, paid before, not inside, the budget). Its
#      planner takes the walls of DDP, ZeRO-2 and ZeRO-3 without offload from autofit estimate, so the
#      budget goes to the offload strategies x4_evidence.sh never reached.
#   2. Issue 7: the Qwen2-1.5B 2-GPU full fine-tuning scenario: autofit search timed against the grid
#      committed in results/grid-2xh100-qwen2-1.5b-full-T1024 (only on that grid's GPU model), then
#      the baselines (hand, HF auto, DeepSpeed's autotuner limited to DS_TIMEOUT, default 300 s).
# From the project root: source .wheels/setup.sh && bash benchmarks/x2_evidence.sh /tmp/x2
# Restartable: a finished step (steps.sh) is never run again.
set -uo pipefail
out=${1:?output folder}
here=$(dirname "$0")
mkdir -p "$out"
source "$here/steps.sh"
step warm-up python3 -c "from benchmarks.search_vs_grid import warm_up; print(warm_up(True))"
BUDGET=${BUDGET:-10m} bash "$here/multi_gpu_evidence.sh" "$out" 0,1
grid=results/grid-2xh100-qwen2-1.5b-full-T1024
if python3 -c "import json, sys, torch; sys.exit(torch.cuda.get_device_name(0) != json.load(open('$grid/summary.json'))['gpu'])"; then
  GRID_FROM=$grid BASELINES=hand,hf-auto,ds-autotune DS_TIMEOUT=${DS_TIMEOUT:-300} bash "$here/scenario_evidence.sh" \
    "$out" bench-2xh100-qwen2-1.5b-full-T1024 Qwen/Qwen2-1.5B 1024 --space full-zero --gpus 0,1
else
  echo "### the Qwen2-1.5B scenario skipped: its grid ran on another GPU model" | tee -a "$out/steps.log"
fi
echo "### $(date +%T) x2_evidence done" | tee -a "$out/steps.log"
touch "$out/DONE"
