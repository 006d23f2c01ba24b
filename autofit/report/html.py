"""The report page: one self-contained HTML file, CSS inline and figures embedded as base64 PNGs."""

from __future__ import annotations

import base64
import html
import time
from typing import Any

from autofit.report.cells import describe_strategy, fmt as _fmt, strategy_rows
from autofit.report.figures import PNG_NAMES, budget_text
from autofit.report.load import OUTCOMES, Probe, Run

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d1d1f;
 max-width:1260px;margin:0 auto;padding:24px 28px 60px;line-height:1.45;font-size:15px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 18px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0}
dl.facts dt{color:#555}dl.facts dd{margin:0}
.winner{background:#f1f8e9;border-left:6px solid #7cb342;padding:12px 18px;margin:18px 0;border-radius:4px}
.winner.none{background:#fff3e0;border-color:#ef6c00}
.winner p{margin:4px 0 10px;font-size:16px}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:10px 14px;overflow-x:auto;font-size:13px;
 line-height:1.35}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.win td{background:#fff8e1}
.nw{white-space:nowrap}td.strat{min-width:17em}.scroll{overflow-x:auto}
.tag{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;white-space:nowrap}
figure{margin:14px 0 26px}figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:14px;margin-top:4px}
.small{color:#666;font-size:13px}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""

E = html.escape


def _code(key: str) -> str:
    """A strategy name that line-wraps only after a slash, never inside 'bf16-pure'."""
    parts = key.split("/")
    spans = [f'<span class="nw">{E(p)}{"/" if i < len(parts) - 1 else ""}</span>' for i, p in enumerate(parts)]
    return f"<code>{'<wbr>'.join(spans)}</code>"


def _tag(p: Probe) -> str:
    long, short, colour = OUTCOMES[p.outcome]
    short = p.status if p.outcome == "error" else short  # error | timeout | crash
    return f'<span class="tag" style="background:{colour}" title="{E(long)}">{E(short)}</span>'


def render_html(run: Run, images: dict[str, bytes]) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autofit report: {E(run.model)} on {E(run.gpu)}</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>autofit report: {E(run.model)} on {E(run.gpu)}</h1>",
        f'<p class="sub">The fastest fine-tuning configuration that fits in memory, found by short real training '
        f"probes. Run directory <code>{E(str(run.path))}</code>; report written "
        f"{E(time.strftime('%Y-%m-%d %H:%M'))}.</p>",
        _html_facts(run), _html_winner(run),
        "<h2>Per strategy: where it fits, where it fails</h2>", _html_summary(run),
        "<h2>Figures</h2>", _html_figures(run, images),
        "<h2>How to read this</h2>", _html_glossary(),
        "<h2>Every probe</h2>",
        '<p class="small">One row per probe, in the order they ran; highlighted rows are the winner\'s measurements. '
        "Memory in GiB: <i>peak</i> is what the limit is compared with; <i>allocated</i>/<i>reserved</i> are PyTorch's "
        "allocator peaks, <i>NVML</i> the whole device, <i>host RAM</i> the process's CPU memory (offload lives there). "
        "Hover an error to read all of it.</p>",
        _html_probes(run.probes, run),
    ]
    if run.grid:
        parts += ["<details><summary>Exhaustive grid rows (--grid)</summary>", _html_probes(run.grid, run), "</details>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_facts(run: Run) -> str:
    gpus = f"{run.num_gpus} \u00d7 {run.gpu}" if run.num_gpus > 1 else run.gpu
    if run.emulated and run.budget_gib is not None:
        gpus += f", memory capped at {run.budget_gib:.1f} GiB (--gpu-memory) to emulate a smaller card"
    t = str(run.max_token_requested or run.max_token)
    if run.max_token_requested and run.max_token != run.max_token_requested:
        t += f" requested; the winner runs at {run.max_token} (nothing fit at the request)"
    facts = [
        ("Model", f"<code>{E(run.model)}</code>"),
        ("Hardware", E(gpus)),
        ("Memory", E(budget_text(run))),
        ("Sequence length (max_token)", E(t)),
        ("Global batch", f"{run.global_batch} samples per optimizer step" if run.global_batch else "not recorded"),
        ("Search space", f"<code>{E(run.space)}</code>"),
        ("Probes", f"{len(run.probes)} in probes.csv over {len({p.strategy for p in run.probes})} strategies"
                   + (f", {run.wall_time_s:.0f} s of search" if run.wall_time_s else "")
                   + (f"; plus {len(run.grid)} exhaustive-grid rows" if run.grid else "")),
        ("Run status", E(run.status)),
    ]
    if run.command:
        facts.append(("Command", f'<code class="small">{E(run.command)}</code>'))
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def _html_winner(run: Run) -> str:
    w = run.winner
    if w is None:
        fitting = [p for p in run.probes if p.outcome == "fits" and p.tokens_per_s]
        best = max(fitting, key=lambda p: p.tokens_per_s) if fitting else None
        so_far = (f" The fastest probe that fit so far: <code>{E(best.strategy)}</code> at micro-batch "
                  f"{best.micro_batch}, {best.tokens_per_s:,.0f} tokens/s." if best else "")
        return (f'<div class="winner none"><p><b>No winner recorded</b> (no best.yaml): the search found no configuration '
                f"that fits under the limit, or has not finished.{so_far}</p></div>")
    accum = f" \u00d7 gradient accumulation {w.gradient_accumulation}" if w.gradient_accumulation else ""
    lim = f" (limit {run.limit_gib:.2f} GiB)" if run.limit_gib is not None else ""
    sentence = (f"<b>Winner:</b> <code>{E(w.key)}</code> ({E(describe_strategy(w.key))}) at micro-batch "
                f"{w.micro_batch}{accum}, max_token {w.max_token}: measured <b>{w.tokens_per_s:,.0f} tokens/s</b> "
                f"with a peak of <b>{w.peak_gib:.2f} GiB</b>{lim}.")
    return (f'<div class="winner"><p>{sentence}</p><div class="small">Paste-ready settings (from best.yaml; '
            f"every number was measured):</div><pre><code>{E(_paste_ready(run))}</code></pre></div>")


def _paste_ready(run: Run) -> str:
    """best.yaml's model dtype, LoRA and TrainingArguments blocks as Python one can paste."""
    best, model = run.best, run.best.get("model") or {}
    imports = ["from transformers import AutoModelForCausalLM, TrainingArguments"]
    body = []
    if model.get("torch_dtype"):
        imports.insert(0, "import torch")
        body.append(f"model = AutoModelForCausalLM.from_pretrained({model.get('id', run.model)!r}, "
                    f"torch_dtype=torch.{model['torch_dtype']}, "
                    f"attn_implementation={model.get('attn_implementation', 'sdpa')!r})")
    if best.get("peft"):
        imports.append("from peft import LoraConfig, get_peft_model")
        body.append(_call("model = get_peft_model(model, LoraConfig", best["peft"], close="))"))
    body.append(_call("args = TrainingArguments", best.get("training_args") or {}))
    if best.get("deepspeed"):
        body.append("# ds_config.json: the deepspeed block of best.yaml, written next to it by the search")
    body.append(f"# every sample padded/truncated to max_token = {run.winner.max_token} tokens")
    return "\n".join(imports + [""] + body)


def _call(head: str, kwargs: dict[str, Any], close: str = ")") -> str:
    body = "".join(f"\n    {k}={v!r}," for k, v in kwargs.items())
    return f"{head}({body}\n{close}"


def _html_summary(run: Run) -> str:
    head = ("<tr><th>strategy</th><th>what it means</th><th>max_token</th><th>largest micro-batch that fits (peak)</th>"
            "<th>first micro-batch that fails</th><th>why</th><th>best tokens/s that fits</th><th>probes</th></tr>")
    rows = []
    w = run.winner
    for r in strategy_rows(run):
        win = w is not None and (w.key, w.max_token) == (r.strategy, r.max_token)
        fit = f"{r.fit_mb} ({r.fit_peak:.2f} GiB)" if r.fit_mb else "none"
        fail = "\u2013" if r.fail_mb is None else f"{r.fail_mb}" + (" (predicted)" if r.fail_source == "predicted" else "")
        why = r.fail_why or (f"no failure up to micro-batch {r.max_tried}, the largest tried" if r.fit_mb else "")
        best = f"{r.best_tps:,.0f} (micro-batch {r.best_mb})" if r.best_tps else "\u2013"
        star = " \u2605 winner" if win else ""
        rows.append(f'<tr class="{"win" if win else ""}"><td class=strat>{_code(r.strategy)}{star}</td>'
                    f"<td>{E(describe_strategy(r.strategy))}</td><td class=n>{r.max_token}</td><td class=n>{fit}</td>"
                    f"<td class=n>{E(fail)}</td><td>{E(why)}</td><td class=n>{best}</td>"
                    f"<td class=n>{r.n_probes}</td></tr>")
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def _html_figures(run: Run, images: dict[str, bytes]) -> str:
    captions = {
        "oom_map.png": ("OOM map. One panel per strategy; each cell is one shape (micro-batch \u00d7 max_token) "
                        "coloured by what happened, with its measured peak memory. Hatched cells are walls the "
                        "search did not need to run: its memory model predicted them over the limit. Empty cells "
                        "were skipped." + (" Cells with a thick outline were probed by the search; the others come "
                                           "from the exhaustive grid given with --grid." if run.grid else "")),
        "throughput.png": (f"Throughput at max_token {run.max_token}: how speed grows with the micro-batch for each "
                           "strategy, and where each line hits its memory wall (\u2716). Bigger micro-batches are "
                           "faster until the GPU is saturated; the winner is the fastest point that fits."),
        "memory_vs_speed.png": ("Every probe that ran, peak memory against speed. Points right of the dashed line "
                                "are over the headroom limit and cannot win even though they ran; beyond the solid "
                                "line a run goes out of memory. The winner is the highest point left of the dashed line. "
                                "Labels give each point's micro-batch (mb); hollow points ran but peaked over the limit."),
    }
    out = []
    for name in PNG_NAMES:
        data = base64.b64encode(images[name]).decode("ascii")
        out.append(f'<figure><img alt="{E(name)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{E(captions[name])} <span class=small>({E(name)})</span></figcaption></figure>")
    return "\n".join(out)


def _html_glossary() -> str:
    items = [
        "<b>micro-batch</b>: samples per forward/backward pass on one GPU. Gradient accumulation repeats it until the "
        "global batch is reached, so the training maths is the same for every micro-batch; only speed and memory change.",
        "<b>max_token</b>: the sequence length every sample is padded or truncated to. Activation memory grows with "
        "micro-batch \u00d7 max_token.",
        "<b>budget / headroom</b>: the memory a run may use, and the fraction of it kept free so that a config that "
        "peaks close to the edge (allocator noise, a longer batch) never wins.",
        "<b>strategy names</b> read left to right: method (<code>lora-r8</code> = LoRA rank 8), precision "
        "(<code>bf16-pure</code> = weights held in bf16), <code>ckpt</code>/<code>nockpt</code> = gradient "
        "checkpointing on/off (less memory, ~30% more compute), <code>actoff</code> = checkpointed activations "
        "kept in host RAM, <code>z0</code>..<code>z3</code> = DeepSpeed ZeRO "
        "stage, <code>offopt</code>/<code>offparam</code> = optimizer state / weights offloaded to CPU RAM.",
        "<b>peak</b>: the device-level peak (NVML, which counts the CUDA context too), or the allocator's reserved "
        "peak if larger; this is what is compared with the limit.",
        "<b>predicted</b> walls come from the search's memory model (peak = fixed + per-token \u00d7 micro-batch \u00d7 "
        "max_token, fitted to the measured peaks); a shape predicted well over the limit is not run.",
    ]
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _html_probes(probes: tuple[Probe, ...], run: Run) -> str:
    head = ("<tr><th>#</th><th>phase</th><th>strategy</th><th>micro-batch</th><th>max_token</th><th>outcome</th>"
            "<th>tokens/s</th><th>peak GiB</th><th>allocated GiB</th><th>reserved GiB</th><th>NVML GiB</th>"
            "<th>host RAM GiB</th><th>grad accum</th><th>step s</th><th>error</th></tr>")
    w = run.winner
    rows = []
    for p in probes:
        win = (w is not None and p.source == "search" and p.status == "ok"
               and (p.strategy, p.micro_batch, p.max_token) == (w.key, w.micro_batch, w.max_token))
        err = p.error.strip().splitlines()[0] if p.error.strip() else ""
        short = err if len(err) <= 70 else err[:68] + "\u2026"
        rows.append(
            f'<tr class="{"win" if win else ""}"><td class=n>{E(p.trial)}</td><td>{E(p.phase)}</td>'
            f"<td class=strat>{_code(p.strategy)}</td><td class=n>{p.micro_batch}</td><td class=n>{p.max_token}</td>"
            f"<td>{_tag(p)}</td><td class=n>{_fmt(p.tokens_per_s, ',.0f')}</td><td class=n>{_fmt(p.peak_gib)}</td>"
            f"<td class=n>{_fmt(p.allocated_gib)}</td><td class=n>{_fmt(p.reserved_gib)}</td>"
            f"<td class=n>{_fmt(p.nvml_gib)}</td><td class=n>{_fmt(p.host_gib)}</td>"
            f"<td class=n>{'' if p.grad_accum is None else p.grad_accum}</td><td class=n>{_fmt(p.step_s, '.2f')}</td>"
            f'<td class=small title="{E(p.error)}">{E(short)}</td></tr>')
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


