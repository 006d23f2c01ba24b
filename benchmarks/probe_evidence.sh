#!/usr/bin/env bash
# Probe evidence on one GPU (issues 2 and 3). On the GPU machine, from the project root:
#   source .wheels/setup.sh && bash benchmarks/probe_evidence.sh $OUT
# Writes probes.csv (one row per probe) and probe.log into the given folder.
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
csv="$out/probes.csv"
run() { echo "### autofit probe $*" | tee -a "$out/probe.log"; python3 -m autofit probe --out "$csv" "$@" 2>&1 | tee -a "$out/probe.log"; }
glm="--model THUDM/glm-4-9b-chat --method lora --lora-r 8 --precision bf16-pure --global-batch 32"
# Issue 3: GLM-4's published LoRA figure (~21.5 GB, batch 1, 512+512 tokens).
run $glm --max-token 1024 --micro-batch 1 --grad-ckpt
run $glm --max-token 1024 --micro-batch 1 --no-grad-ckpt
# Issue 2: escalation from micro-batch 1 to the first OOM at max_token 1024, with and without checkpointing.
run $glm --max-token 1024 --micro-batch 1,2,4,8,16,32,64 --no-grad-ckpt
run $glm --max-token 1024 --micro-batch 1,2,4,8,16,32,64 --grad-ckpt
# ... and the same on an emulated 24 GiB card (RTX 3090/4090).
run $glm --max-token 1024 --micro-batch 1,2,4,8 --no-grad-ckpt --gpu-memory 24GiB
run $glm --max-token 1024 --micro-batch 1,2,4,8 --grad-ckpt --gpu-memory 24GiB
# ZeRO-3 with CPU offload of optimizer and parameters on one GPU (full fine-tuning, Qwen2-1.5B).
run --model Qwen/Qwen2-1.5B --method full --precision bf16 --zero 3 --offload-optimizer --offload-params \
    --max-token 1024 --micro-batch 1,4 --grad-ckpt --global-batch 16
