"""Child of benchmarks/baselines.py: HF Trainer's auto_find_batch_size, as a user would run it.

    python -m benchmarks.hf_auto_train PLAN.json      (under torchrun for several GPUs: plain DDP)

The model is built as `autofit verify` builds it (autofit.probe.worker.build_model / apply_method,
random weights, the --gpu-memory cap applied by setup_device), then trained by transformers.Trainer
with the strategy's TrainingArguments, per_device_train_batch_size = the start batch (64) and
auto_find_batch_size=True. With transformers 4.40.2 that hands the training loop to accelerate's
find_executable_batch_size, which multiplies the batch by 0.9 after each OOM (transformers' docstring
says "cut in half"; the code it calls does x0.9) and measures nothing about speed. No DeepSpeed:
transformers 4.40.2 refuses auto_find_batch_size with DeepSpeed.

Writes the plan's result JSON: every batch size tried, the one it trained at, its tokens/s (median
optimizer step after the first) and peak memory (the figure autofit compares: spec.compared_peak).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

T_START = time.time()


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    out = Path(plan["result"])
    result: dict = {"status": "failed", "attempts": []}
    try:
        result = train(plan, local_rank, world, result)
    except Exception as exc:
        from autofit.probe.oom import last_line

        result.update(status="failed", error=f"{type(exc).__name__}: {last_line(exc)}")
        raise
    finally:
        if rank == 0:
            result["wall_s"] = round(time.time() - T_START, 2)
            out.write_text(json.dumps(result, indent=2))
    return 0


def train(plan: dict, local_rank: int, world: int, result: dict) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from autofit.models import ModelSource
    from autofit.probe.measure import PeakSampler
    from autofit.probe.worker import limit_host_memory, setup_device, trainable_model
    from autofit.spec import Shape, compared_peak, context_from_dict, strategy_from_dict
    from autofit.trainconfig import training_args
    from autofit.verify import SyntheticTokens

    ctx = context_from_dict(plan["context"])
    strategy = strategy_from_dict(plan["strategy"])
    source = ModelSource.from_dict(plan["source"])
    on_cuda = ctx.device == "cuda"
    # Plain DDP under torchrun, no DeepSpeed: build as a one-GPU job would (the dtype rule keys on it).
    ctx1 = replace(ctx, gpus=ctx.gpus[:1])
    device, device_name = setup_device(torch, ctx1, local_rank)
    T, start, accum, steps = plan["max_token"], plan["start_batch"], plan["grad_accum"], plan["steps"]
    result["device_name"] = device_name

    with tempfile.TemporaryDirectory(prefix="autofit-hf-auto-") as tmp:
        args = dict(training_args(strategy, ctx1, Shape(start, T), ds_config_path=None),
                    output_dir=tmp, per_device_train_batch_size=start, gradient_accumulation_steps=accum,
                    auto_find_batch_size=True, max_steps=steps, disable_tqdm=True, dataloader_num_workers=0,
                    use_cpu=not on_cuda, save_strategy="no", report_to="none", logging_steps=10**6)
        targs = TrainingArguments(**args)
        model = trainable_model(torch, source, ctx1, strategy, device, None)
        vocab = int(model.get_input_embeddings().num_embeddings)
        data = SyntheticTokens(steps * start * accum * world, T, vocab)
        sampler = PeakSampler(local_rank if on_cuda else None)
        attempts = result["attempts"]

        class Watch(TrainerCallback):
            """One on_train_begin per batch size accelerate tries; steps timed only for the last."""

            def on_train_begin(self, a, state, control, **kw):
                attempts.append({"batch_size": state.train_batch_size, "t": round(time.time() - T_START, 2), "steps": []})
                if on_cuda:
                    torch.cuda.reset_peak_memory_stats()
                sampler.reset()

            def on_step_begin(self, a, state, control, **kw):
                if on_cuda:
                    torch.cuda.synchronize()
                self.t = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                if on_cuda:
                    torch.cuda.synchronize()
                attempts[-1]["steps"].append(round(time.perf_counter() - self.t, 4))
                attempts[-1].setdefault("first_step_at", round(time.time() - T_START, 2))

        trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=default_data_collator, callbacks=[Watch()])
        limit_host_memory()  # test hook (AUTOFIT_TEST_HOST_LIMIT): a real allocation failure on the CPU
        try:
            trainer.train()
        finally:
            sampler.close()

    last = attempts[-1]
    bs = trainer._train_batch_size
    timed = last["steps"][1:] or last["steps"]
    step_s = statistics.median(timed)
    reserved = torch.cuda.max_memory_reserved() if on_cuda else None
    result.update(status="ok", batch_size=bs, timed_steps=len(timed), step_s=round(step_s, 4),
                  tokens_per_s=round(bs * accum * world * T / step_s, 2),
                  peak=compared_peak(sampler.nvml_peak, reserved, sampler.host_peak),
                  peak_reserved=reserved, nvml_peak=sampler.nvml_peak, host_peak=sampler.host_peak,
                  time_to_first_step_s=last.get("first_step_at"))
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
