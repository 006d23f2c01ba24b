#!/usr/bin/env bash
# Issue 7's scenario outside the GLM family: Meta-Llama-3-8B LoRA at max_token 1024 on one GPU, autofit
# search against the grid at T=1024 (--grid-tokens: a cheaper grid, so the time fraction only gets
# harder to meet), then the baselines in the same folder. On the GPU machine, from the project root:
#   source .wheels/setup.sh && bash benchmarks/other_model_evidence.sh /tmp/evidence
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
source "$(dirname "$0")/steps.sh"
llama="--model meta-llama/Meta-Llama-3-8B --max-token 1024 --global-batch 32 --space default"
step bench-llama3 python3 -m benchmarks.search_vs_grid $llama --budget 8m --grid-tokens 1024 --out "$out/bench-llama3"
step baselines-llama3 python3 -m benchmarks.baselines $llama --ds-timeout 240 --out "$out/bench-llama3"
echo "### $(date +%T) all done" | tee -a "$out/steps.log"
touch "$out/all.done"
