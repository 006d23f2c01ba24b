#!/usr/bin/env bash
# The search's fresh-worker check of its winner (autofit.search.planner._fresh_check), end to end on one
# GPU: the GLM-4-9B-chat LoRA T=2048 scenario under --gpu-memory 24GiB, searched (no grid) and its winner
# verified through HF Trainer. Before the check this winner's HF Trainer peak was 7.2% over the search's
# figure (results/verify-h200-glm4-lora-T2048-24GiB). From the project root:
#   source .wheels/setup.sh && bash benchmarks/fresh_check_evidence.sh OUT
# GPU names the folder (default h200); NO_WARM_UP=1 skips search_vs_grid's warm-up. Restartable like the other evidence scripts (steps.sh).
set -uo pipefail
out=${1:?output folder}; name=search-${GPU:-h200}-glm4-lora-T2048-24GiB
mkdir -p "$out"
source "$(dirname "$0")/steps.sh"
step "$name" python3 -m benchmarks.search_vs_grid --model THUDM/glm-4-9b-chat --max-token 2048 --global-batch 32 \
  --space consumer-24gb --gpu-memory 24GiB --skip-grid --budget 8m ${NO_WARM_UP:+--no-warm-up} --out "$out/$name"
step "verify-$name" python3 -m autofit verify "$out/$name/search" --steps "${VERIFY_STEPS:-5}"
echo "### $(date +%T) fresh_check_evidence done" | tee -a "$out/steps.log"
touch "$out/DONE"
