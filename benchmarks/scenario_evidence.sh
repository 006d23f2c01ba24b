#!/usr/bin/env bash
# One issue-7 scenario on the GPU machine: autofit search against the grid at the requested max_token
# only (--grid-tokens: a cheaper grid, so the time fraction only gets harder to meet), then the
# baselines in the same folder. From the project root:
#   source .wheels/setup.sh && bash benchmarks/scenario_evidence.sh OUT NAME MODEL MAX_TOKEN [FLAGS...]
# e.g. `... /tmp/ev bench-h100-llama3-8b-lora-T1024 meta-llama/Meta-Llama-3-8B 1024` or
# `... /tmp/ev bench-h100-glm4-lora-T2048 THUDM/glm-4-9b-chat 2048`; FLAGS (e.g. --space consumer-24gb
# --gpu-memory 24GiB, or --gpus 0,1) go to both. BASELINES picks a subset (baselines.py --only) and
# DS_TIMEOUT the autotuner's limit (default 600 s); GRID_FROM=DIR times the search against the grid an
# earlier run of this scenario committed (search_vs_grid --grid-from). Restartable like search_evidence.sh.
set -uo pipefail
out=${1:?output folder}; name=${2:?scenario name}; model=${3:?model}; t=${4:?max_token}; shift 4
mkdir -p "$out"
source "$(dirname "$0")/steps.sh"
sc="--model $model --max-token $t --global-batch 32"
[[ " $* " == *" --space "* ]] || sc="$sc --space default"
step "bench-$name" python3 -m benchmarks.search_vs_grid $sc "$@" --budget 8m --grid-tokens "$t" ${GRID_FROM:+--grid-from "$GRID_FROM"} --out "$out/$name"
step "baselines-$name" python3 -m benchmarks.baselines $sc "$@" ${BASELINES:+--only "$BASELINES"} --ds-timeout "${DS_TIMEOUT:-600}" --out "$out/$name"
echo "### $(date +%T) $name done" | tee -a "$out/steps.log"
touch "$out/$name.all.done"
