#!/usr/bin/env bash
# Issue 18's evidence for one scenario on one GPU under --gpu-memory 24GiB (a 24 GB card emulated):
#   source .wheels/setup.sh && bash benchmarks/evidence_24gb.sh OUT NAME MODEL MAX_TOKEN
# e.g. `... /tmp/ev h200-glm4-lora-T2048-24GiB THUDM/glm-4-9b-chat 2048`. In OUT/NAME:
#   search/            autofit search with no --space (auto), and the grid of the auto space at MAX_TOKEN only,
#                      one measured step per probe as the search measures (benchmarks.search_vs_grid)
#   search-quantize/   the same run dir resumed with --quantize: the same probes, the winner may be 4-bit
#   consumer.jsonl     the consumer-24gb space's winner (ZeRO-3, parameters and optimizer on the CPU, with
#                      checkpointing), probed in the same call: the baseline the speed-ups are measured against
#   verify-*.log       autofit verify of both winners through HF Trainer
# PHASE=search runs all but the grid, PHASE=grid only the grid (each fits one device call); unset, both.
# Restartable like the other evidence scripts (steps.sh).
set -uo pipefail
out=${1:?output folder}; name=${2:?scenario name}; model=${3:?model}; T=${4:?max_token}
mkdir -p "$out/$name"
source "$(dirname "$0")/steps.sh"
sc=(--model "$model" --max-token "$T" --gpu-memory 24GiB --global-batch 16)
out="$out/$name"
grid=(python3 -m benchmarks.search_vs_grid "${sc[@]}" --space auto --grid-tokens "$T" --grid-measure-steps 1 --out "$out")
if [ "${PHASE:-}" = grid ]; then
  step grid "${grid[@]}" --grid-only
  rm -rf "$out/grid_io"; exit 0
fi
step bench "${grid[@]}" --budget 10m --skip-grid
[ -e "$out/search-quantize" ] || cp -r "$out/search" "$out/search-quantize"
step quantize python3 -m autofit search "${sc[@]}" --run-dir "$out/search-quantize" --resume --quantize
step consumer sh -c "python3 -m autofit probe ${sc[*]} --grad-ckpt --zero 3 --offload-optimizer --offload-params \
  --micro-batch 1,2,4 --measure-steps 2 --json > '$out/consumer.jsonl'"
step verify-search python3 -m autofit verify "$out/search" --steps "${VERIFY_STEPS:-6}"
step verify-search-quantize python3 -m autofit verify "$out/search-quantize" --steps "${VERIFY_STEPS:-6}"
rm -rf "$out"/search*/probe_io
[ "${PHASE:-}" = search ] || step grid "${grid[@]}" --grid-only
echo "### $(date +%T) evidence_24gb $name done" | tee -a "$out/steps.log"
