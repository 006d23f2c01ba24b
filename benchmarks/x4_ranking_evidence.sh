#!/usr/bin/env bash
# Issues 6 and 7 on one nvidia-h100-x4 machine (~27 min held), now that a 4-GPU kind is lent again:
#   1. Alone on the machine: the GLM-4-9B-chat full fine-tuning search on all four GPUs (BUDGET4, 7m),
#      after the CPU Adam JIT build (paid before the budget). The earlier 4-GPU run spent its 4 min on
#      the JIT build and one offload probe and ranked nothing; on 4 x 80 GB ZeRO-2 and ZeRO-3 fit
#      without offload, so this one ranks ZeRO stages, checkpointing and offload.
#   2. Then, on H100s only (the committed grid and winners were measured on H100s), three lanes at once,
#      each pinned to its own cores:
#      GPUs 0,1 (cores 0-31): the Qwen2-1.5B 2-GPU full fine-tuning scenario: autofit search timed
#                against results/grid-2xh100-qwen2-1.5b-full-T1024, then hand, HF auto and DeepSpeed's
#                autotuner (DS_TIMEOUT, 240 s; it numbers its GPUs from 0, so it gets GPUs 0,1);
#      GPU 2 (cores 32-47) and GPU 3 (cores 48-63): `autofit verify` of the committed Llama-3-8B T=1024
#                and GLM-4 T=2048 LoRA winners (both nockpt/z0 LoRA: GPU-bound, no CPU Adam beside
#                the timed Qwen2 lane; an offload job beside one slowed it by up to 40% before).
#      On other GPUs, step 2 is the verify_gap.sh diagnostic on GPUs 0,1 instead; a second call on H200s
#      (once results/search-4xh200-glm4-full-T1024 is committed) verifies that winner and probes the
#      runners-up its search skipped.
# From the project root: source .wheels/setup.sh && bash benchmarks/x4_ranking_evidence.sh /tmp/x4r
# Restartable: a finished step (steps.sh) is never run again.
set -uo pipefail
out=${1:?output folder}
here=$(dirname "$0")
mkdir -p "$out"
source "$here/steps.sh"
if python3 -c "import sys, torch; sys.exit('H100' not in torch.cuda.get_device_name(0))"; then gpus=h100
elif [ -d results/search-4xh200-glm4-full-T1024/search ]; then gpus=h200-searched
else gpus=other; fi
if [ "$gpus" != h200-searched ]; then
  step warm-up python3 -c "from benchmarks.search_vs_grid import warm_up; print(warm_up(True))"
  BUDGET=${BUDGET4:-7m} bash "$here/multi_gpu_evidence.sh" "$out" 0,1,2,3
fi
if [ "$gpus" = h100 ]; then
  ( pin_cores 0-31; GRID_FROM=results/grid-2xh100-qwen2-1.5b-full-T1024 BASELINES=hand,hf-auto,ds-autotune \
      DS_TIMEOUT=${DS_TIMEOUT:-240} bash "$here/scenario_evidence.sh" "$out" bench-2xh100-qwen2-1.5b-full-T1024 \
      Qwen/Qwen2-1.5B 1024 --space full-zero --gpus 0,1 ) &
  ( pin_cores 32-47; verify_copy verify-h100-llama3-8b-lora-T1024 bench-h100-llama3-8b-lora-T1024 2 ) &
  ( pin_cores 48-63; verify_copy verify-h100-glm4-lora-T2048 bench-h100-glm4-lora-T2048 3 ) &
  wait
elif [ "$gpus" = h200-searched ]; then
  # H200s, second call: the 4 x H200 search is committed (this script's first call there ran it, and
  # verify_gap.sh). Verify its winner, then measure the three runners-up it skipped because a faster
  # strategy already fit the largest micro-batch: was the skip right?
  verify_copy verify-4xh200-glm4-full-T1024 search-4xh200-glm4-full-T1024
  cell=(--model THUDM/glm-4-9b-chat --method full --precision bf16 --gpus 0,1,2,3 --global-batch 16 --max-token 1024
        --micro-batch 4 --out "$out/skipped.csv")
  step skipped-nockpt-z3 python3 -m autofit probe "${cell[@]}" --no-grad-ckpt --zero 3
  step skipped-ckpt-z2 python3 -m autofit probe "${cell[@]}" --grad-ckpt --zero 2
  step skipped-nockpt-z2-offopt python3 -m autofit probe "${cell[@]}" --no-grad-ckpt --zero 2 --offload-optimizer
else
  echo "### not H100s: the Qwen2 scenario and the H100 verifies skipped; verify_gap.sh instead" | tee -a "$out/steps.log"
  bash "$here/verify_gap.sh" "$out/gap"
fi
echo "### $(date +%T) x4_ranking_evidence done" | tee -a "$out/steps.log"
touch "$out/DONE"
