#!/usr/bin/env bash
# Verifies a committed search's winner on this machine's GPU when it is not the model of GPU the search
# ran on (issue 7: the 24 GiB T=2048 GLM-4 winner was searched on an H100 and no H100 was lent since).
# Under an emulated cap (--gpu-memory) the budget, the model and so the allocations are the GPU's business
# only through the CUDA context; the tokens/s are not comparable across GPUs. So, into $out:
#   probe-NAME-fresh.csv  `autofit probe` of the winner's cell alone in a fresh worker here (verify's situation)
#   probe-NAME-warm.csv   the same cell after micro-batch 1 in one worker, as the search escalated to it
#   NAME/                 `autofit verify` on a copy of the run dir (verify.json names both GPUs)
# From the project root: source .wheels/setup.sh && bash benchmarks/cross_verify.sh OUT NAME RESULTS_FOLDER
# e.g. NAME=verify-h200-glm4-lora-T2048-24GiB RESULTS_FOLDER=bench-h100-glm4-lora-T2048-24GiB.
set -uo pipefail
out=${1:?output folder}; name=${2:?verify folder name}; src=${3:?results folder with search/best.yaml}
here=$(dirname "$0")
mkdir -p "$out"
source "$here/steps.sh"
# The winner's micro-batch, then its cell as `autofit probe` options (best.yaml's config, budget, global batch).
mapfile -t args < <(python3 - "results/$src/search/best.yaml" <<'EOF'
import sys, yaml
b = yaml.safe_load(open(sys.argv[1]))
c, hw = b["config"], b["hardware"]
a = ["--model", b["model"]["id"], "--max-token", c["max_token"], "--global-batch", b["search"]["global_batch"],
     "--method", c["method"], "--lora-r", c.get("lora_r", 8), "--lora-alpha", c.get("lora_alpha", 32),
     "--precision", c["precision"], "--grad-ckpt" if c["gradient_checkpointing"] else "--no-grad-ckpt",
     "--zero", c["zero_stage"]]
a += ["--offload-optimizer"] * bool(c["offload_optimizer"]) + ["--offload-params"] * bool(c["offload_params"])
if hw.get("emulated_gpu_memory"):
    a += ["--gpu-memory", f"{hw['memory_budget_gib']:g}GiB"]
print("\n".join(map(str, [c["micro_batch"]] + a)))
EOF
)
mb=${args[0]}; args=("${args[@]:1}")
step "probe-$name-fresh" python3 -m autofit probe "${args[@]}" --micro-batch "$mb" --out "$out/probe-$name-fresh.csv"
[ "$mb" -gt 1 ] && step "probe-$name-warm" python3 -m autofit probe "${args[@]}" --micro-batch "1,$mb" --out "$out/probe-$name-warm.csv"
VERIFY_STEPS=${VERIFY_STEPS:-5} verify_copy "$name" "$src"
echo "### $(date +%T) cross_verify done" | tee -a "$out/steps.log"
touch "$out/DONE"
