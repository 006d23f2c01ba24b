#!/usr/bin/env bash
# Issue 7 baselines on one GPU, GLM-4-9B-chat LoRA at max_token 1024: hand-tuning, HF Trainer's
# auto_find_batch_size and DeepSpeed's autotuner, on the whole card and under a 24 GiB cap, each written
# next to the search benchmark of the same scenario (OUT/bench-80, OUT/bench-24). On the GPU machine:
#   source .wheels/setup.sh && bash benchmarks/baselines_evidence.sh /tmp/evidence [80|24 ...]
# The wheels must include tabulate (EXTRA_WHEELS="tabulate" bash ../shared/device/make-wheels.sh): the
# autotuner imports it. Restartable like search_evidence.sh.
set -uo pipefail
out=${1:?output folder}; shift
which=${*:-80 24}
mkdir -p "$out"
source "$(dirname "$0")/steps.sh"
b="python3 -m benchmarks.baselines --model THUDM/glm-4-9b-chat --max-token 1024 --global-batch 32 --ds-timeout 600"
for w in $which; do
  case $w in
    80) step baselines80 $b --space default --out "$out/bench-80" ;;
    24) step baselines24 $b --space consumer-24gb --gpu-memory 24GiB --out "$out/bench-24" ;;
  esac
done
echo "### $(date +%T) baselines done" | tee -a "$out/steps.log"
touch "$out/baselines.done"
