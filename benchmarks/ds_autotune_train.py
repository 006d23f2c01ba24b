"""Training script for DeepSpeed's autotuner (the ds-autotune baseline of benchmarks/baselines.py).

    deepspeed --autotuning tune benchmarks/ds_autotune_train.py --plan PLAN.json --deepspeed_config ds_config.json

The autotuner launches this script once per experiment, with --deepspeed_config replaced by the
experiment's config (base64) and --local_rank appended by the launcher. The model is built as the
probe builds it (random weights, autofit.probe.worker.build_model / apply_method); training is
deepspeed.initialize and a plain loop on full-length random batches. The engine itself stops the
process after the autotuner's profiling steps and writes the metrics the autotuner reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file by the launcher


def main() -> int:
    import deepspeed
    import torch

    from autofit.models import ModelSource
    from autofit.probe.worker import setup_device, torch_optimizer, trainable_model
    from autofit.spec import context_from_dict, strategy_from_dict

    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True)
    ap.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    ap.add_argument("--steps", type=int, default=1000, help="upper bound; the engine exits after its profiling steps")
    ap = deepspeed.add_config_arguments(ap)
    args = ap.parse_args()
    plan = json.loads(Path(args.plan).read_text())
    ctx, strategy = context_from_dict(plan["context"]), strategy_from_dict(plan["strategy"])
    source = ModelSource.from_dict(plan["source"])

    device, _ = setup_device(torch, ctx, args.local_rank)
    deepspeed.init_distributed()
    model = trainable_model(torch, source, ctx, strategy, device, None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch_optimizer(torch, strategy, params)
    engine, *_ = deepspeed.initialize(args=args, model=model, model_parameters=params, optimizer=optimizer)
    mb = engine.train_micro_batch_size_per_gpu()
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (mb, plan["max_token"]), device=engine.device)
    model.train()
    for _ in range(args.steps):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
