#!/usr/bin/env bash
# Issue 7's single-GPU evidence still missing, for one nvidia-h100-x1 session (~25 min held; an H100,
# since the committed winners and grids were measured on H100s):
#   1. verify the committed Llama-3-8B T=1024 and GLM-4 T=2048 winners (30 steps through HF Trainer
#      each), into $out/verify-h100-*: copy those folders to results/ with their verify.json.
#   2. the GLM-4-9B-chat LoRA scenario at T=2048 under --gpu-memory 24GiB (consumer-24gb space): grid
#      at T=2048, autofit search, baselines (DeepSpeed's autotuner limited to DS_TIMEOUT, default 300 s).
# From the project root: source .wheels/setup.sh && bash benchmarks/x1_evidence.sh /tmp/x1
# Restartable: a finished step (steps.sh) is never run again.
set -uo pipefail
out=${1:?output folder}
here=$(dirname "$0")
mkdir -p "$out"
source "$here/steps.sh"
if ! python3 -c "import sys, torch; sys.exit('H100' not in torch.cuda.get_device_name(0))"; then
  echo "### not an H100: the committed winners were measured on H100s; nothing run" | tee -a "$out/steps.log"
  touch "$out/DONE"; exit 0
fi
verify_copy verify-h100-llama3-8b-lora-T1024 bench-h100-llama3-8b-lora-T1024
verify_copy verify-h100-glm4-lora-T2048 bench-h100-glm4-lora-T2048
DS_TIMEOUT=${DS_TIMEOUT:-300} bash "$here/scenario_evidence.sh" "$out" bench-h100-glm4-lora-T2048-24GiB \
  THUDM/glm-4-9b-chat 2048 --space consumer-24gb --gpu-memory 24GiB
echo "### $(date +%T) x1_evidence done" | tee -a "$out/steps.log"
touch "$out/DONE"
