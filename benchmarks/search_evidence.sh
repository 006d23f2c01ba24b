#!/usr/bin/env bash
# Search and verify evidence on one GPU (issues 4 and 5): GLM-4-9B-chat LoRA at max_token 1024, the
# whole card and an emulated 24 GiB card, each search against the exhaustive grid on the same GPU, then
# each winner trained through HF Trainer by `autofit verify`. On the GPU machine, from the project root:
#   source .wheels/setup.sh && bash benchmarks/search_evidence.sh /tmp/evidence
# Restartable: a step that finished (NAME.done) or failed (NAME.failed) is not run again.
# Env: GRID80_FROM / GRID24_FROM=results/<dir> compare that search with the committed grid of the same
# scenario instead of paying for a new one (4 and ~15 minutes; the oracle does not change when the
# planner does); SKIP_VERIFY=1 leaves out the two verify runs.
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
source "$(dirname "$0")/steps.sh"
glm="--model THUDM/glm-4-9b-chat --max-token 1024 --global-batch 32"
step bench80 python3 -m benchmarks.search_vs_grid $glm --space default --budget 8m \
  ${GRID80_FROM:+--grid-from "$GRID80_FROM"} --out "$out/bench-80"
# Steps chosen so each verify takes about two minutes: the 24 GiB winner offloads to the CPU (~25 s a step).
[ -n "${SKIP_VERIFY:-}" ] || step verify80 python3 -m autofit verify "$out/bench-80/search" --steps 30
step bench24 python3 -m benchmarks.search_vs_grid $glm --space consumer-24gb --gpu-memory 24GiB --budget 5m \
  ${GRID24_FROM:+--grid-from "$GRID24_FROM"} --out "$out/bench-24"
[ -n "${SKIP_VERIFY:-}" ] || step verify24 python3 -m autofit verify "$out/bench-24/search" --steps 6
echo "### $(date +%T) all done" | tee -a "$out/steps.log"
touch "$out/all.done"
