#!/usr/bin/env bash
# Issue 6 evidence on several GPUs of one host: a full fine-tuning search of GLM-4-9B-chat across ZeRO
# stages and CPU offload. On nvidia-h100-x2 (or x4), from the project root:
#   source .wheels/setup.sh && bash benchmarks/multi_gpu_evidence.sh /tmp/multi [GPUS]
# BUDGET (default 20m) is the search's --budget.
# Plain AdamW needs 16 bytes per parameter (~150 GB for 9.4 B): DDP and ZeRO-2 cannot hold it on 80 GB
# cards, so the search must find the ZeRO-3 / offload strategies that fit and rank them by tokens/s.
# Restartable like search_evidence.sh: a finished step (NAME.done) is not run again.
set -uo pipefail
out=${1:?output folder}
gpus=${2:-$(python3 -c "import torch; print(','.join(map(str, range(torch.cuda.device_count()))))")}
n=$(echo "$gpus" | tr ',' '\n' | wc -l)
mkdir -p "$out"
source "$(dirname "$0")/steps.sh"
step "full-${n}gpu" python3 -m autofit search --model THUDM/glm-4-9b-chat --method full --space full-zero \
  --max-token 1024 --global-batch 16 --gpus "$gpus" --budget "${BUDGET:-20m}" --run-dir "$out/search-glm4-full-${n}gpu"
step "report-${n}gpu" python3 -m autofit report "$out/search-glm4-full-${n}gpu"
echo "### $(date +%T) all done" | tee -a "$out/steps.log"
touch "$out/all.done"
