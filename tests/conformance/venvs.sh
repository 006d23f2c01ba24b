#!/usr/bin/env bash
# Build the conformance venvs (tests/test_export_conformance.py) under DIR, one per tool, each with the
# versions autofit's export headers name (autofit/export.py CHECKED_AGAINST):
#   DIR/hf            transformers, peft, DeepSpeed (+ datasets, ruamel.yaml for GLM-4's vendored loader)
#   DIR/llamafactory  LLaMA-Factory 0.9.5
#   DIR/axolotl       axolotl 0.19.0
# LLaMA-Factory and axolotl are installed --no-deps plus what their parsers import: their full
# requirements (gradio, vllm-era kernels, cloud filesystems...) take 13+ minutes and gigabytes here.
# liger-kernel is --no-deps too: the parsers only check that it is installed (it needs triton to run).
# usage: tests/conformance/venvs.sh DIR [hf|llamafactory|axolotl ...]
set -euo pipefail
dir=$1; shift
tools=${*:-hf llamafactory axolotl}
mkvenv() {  # a fresh venv with the CPU torch build (from this machine's wheels when present)
    python3 -m venv "$1"
    "$1/bin/pip" install -q --upgrade pip
    "$1/bin/pip" install -q --upgrade wheel setuptools
    "$1/bin/pip" install -q torch==2.13.0 || "$1/bin/pip" install -q torch
}
build_ds_ops() {  # DeepSpeed's CPU all-reduce op, which every DeepSpeed init on a CPU builds (about a minute),
    # built once into the venv (tests/test_export_conformance.py extensions_dir reads it there)
    TORCH_EXTENSIONS_DIR="$1/torch_extensions" "$1/bin/python" -c \
        "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
}
for tool in $tools; do
    v=$dir/$tool
    rm -rf "$v"
    start=$SECONDS
    mkvenv "$v"
    case $tool in
    hf)
        DS_BUILD_OPS=0 "$v/bin/pip" install -q transformers==5.24.0 peft==0.21.2 accelerate==1.15.0 \
            deepspeed==0.19.8 datasets ruamel.yaml pyyaml
        build_ds_ops "$v" ;;
    llamafactory)
        "$v/bin/pip" install -q --no-deps llamafactory==0.9.5 liger-kernel==0.8.1
        DS_BUILD_OPS=0 "$v/bin/pip" install -q transformers==5.6.0 peft==0.18.1 accelerate==1.11.0 datasets==4.0.0 \
            trl==0.24.0 omegaconf pyyaml packaging deepspeed==0.19.8
        build_ds_ops "$v" ;;
    axolotl)
        "$v/bin/pip" install -q --no-deps axolotl==0.19.0 liger-kernel==0.8.1
        "$v/bin/pip" install -q transformers==5.16.1 peft==0.20.0 accelerate==1.13.0 datasets==4.8.4 \
            pydantic==2.12.5 pyyaml addict fire pillow ;;
    *) echo "unknown tool $tool" >&2; exit 2 ;;
    esac
    echo "conformance venv $tool: $((SECONDS - start)) s"
done
