"""The shapes that decide a model's training memory, read from the model built on the meta device.

For the built-in table they are read once and shipped as data (autofit.models.shipped_arch; written by
`python -m autofit.memory.arch`, and a test rebuilds every entry): importing torch and transformers and
building the model take seconds that a search would otherwise spend before its first probe. Any
other model is built on the meta device at its first arch_of call (no memory, no weights).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Any

from autofit.errors import ModelSourceError

# Which activation feeds a Linear, by its name in the block (Llama/Qwen2/Mistral/Gemma/Mixtral names,
# GLM remote code). The saved-for-backward input of a Linear depends on it.
ATTN_IN, ATTN_OUT, MLP_IN, MLP_OUT = "attn_in", "attn_out", "mlp_in", "mlp_out"
_GROUP_OF_NAME = {
    "q_proj": ATTN_IN, "k_proj": ATTN_IN, "v_proj": ATTN_IN, "query_key_value": ATTN_IN, "qkv_proj": ATTN_IN,
    "o_proj": ATTN_OUT, "dense": ATTN_OUT, "out_proj": ATTN_OUT,
    "gate_proj": MLP_IN, "up_proj": MLP_IN, "w1": MLP_IN, "w3": MLP_IN, "gate": MLP_IN, "shared_expert_gate": MLP_IN,
    "dense_h_to_4h": MLP_IN, "gate_up_proj": MLP_IN,
    "down_proj": MLP_OUT, "w2": MLP_OUT, "dense_4h_to_h": MLP_OUT,
}


@dataclass(frozen=True)
class Linear:
    """One nn.Linear of a decoder block."""

    name: str            # path inside the block, e.g. "self_attn.q_proj"
    group: str           # ATTN_IN | ATTN_OUT | MLP_IN | MLP_OUT: the activation it reads
    in_features: int
    out_features: int
    share: float         # fraction of tokens it sees: top_k / experts for an MoE expert, else 1


@dataclass(frozen=True)
class Arch:
    """The shapes that decide memory, read from the model built on the meta device."""

    name: str
    params: int                   # all parameters, tied ones once (what count_params_meta counts)
    layers: int
    hidden: int
    heads: int
    head_dim: int
    vocab: int
    block_params: int             # one decoder block
    block_linear_params: int      # of which nn.Linear weights (what autocast copies to half)
    head_params: int              # the output projection (vocab x hidden), tied or not
    block_linears: tuple[Linear, ...]
    other_linears: tuple[tuple[str, int, int], ...]   # Linear layers outside the blocks: (name, in, out)
    mlp_width: float              # MLP intermediate width per token (top_k x expert width + shared for MoE)
    moe_top_k: int                # 0 for a dense MLP
    sliding_window: int | None    # transformers builds a T x T mask once T reaches it (qwen2, mistral)
    rope_cache_per_position: int  # cos/sin cache elements per position over all layers (4.40 qwen2/mistral)

    @property
    def attn_width(self) -> int:
        return self.heads * self.head_dim


@functools.lru_cache(maxsize=16)
def _arch_cached(source_json: str) -> Arch:
    from autofit.models import ModelSource, shipped_arch

    shipped = shipped_arch(source_json)
    if shipped is not None:
        return arch_from_dict(shipped)
    return _read_arch(ModelSource.from_dict(json.loads(source_json)))


def arch_from_dict(d: dict) -> Arch:
    return Arch(**{**d, "block_linears": tuple(Linear(**lin) for lin in d["block_linears"]),
                   "other_linears": tuple(tuple(o) for o in d["other_linears"])})


def table_archs() -> dict:
    """Every built-in model's arch, read from its model on the meta device, as archs.yaml holds them."""
    from autofit.models import _read_table, resolve_model, source_digest

    out = {}
    for name in _read_table()["models"]:
        source = resolve_model(name)
        arch = json.loads(json.dumps(asdict(_read_arch(source))))  # tuples as lists, as YAML reads them back
        out[source.name] = {"source": source_digest(json.dumps(source.to_dict(), sort_keys=True)), "arch": arch}
    return out


def arch_of(source) -> Arch:
    """The memory-relevant shapes of `source` (a ModelSource): shipped for the built-in table, else read
    from its model built on the meta device."""
    return _arch_cached(json.dumps(source.to_dict(), sort_keys=True))


def _read_arch(source) -> Arch:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    from autofit.models import build_config, decoder_blocks

    config = build_config(source, max_positions=1)  # RoPE caches are counted per position below
    try:
        with torch.device("meta"), no_init_weights():
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=source.trust_remote_code)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelSourceError(f"cannot build {source.name} on the meta device: {exc}") from None
    model.tie_weights()
    blocks = decoder_blocks(model, source)
    block = blocks[0]
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    experts = int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)
    top_k = int(getattr(config, "num_experts_per_tok", 0) or 0) if experts else 0
    linears = tuple(_linear(name, mod, config.hidden_size, top_k / experts if experts else 1.0)
                    for name, mod in block.named_modules() if isinstance(mod, torch.nn.Linear))
    in_blocks = {id(m) for m in blocks.modules()}
    head = model.get_output_embeddings()
    rope = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("cos_cached", "sin_cached")))
    return Arch(
        name=source.name,
        params=sum(p.numel() for p in model.parameters()),
        layers=len(blocks),
        hidden=int(config.hidden_size),
        heads=heads,
        head_dim=head_dim,
        vocab=int(head.out_features),
        block_params=sum(p.numel() for p in block.parameters()),
        block_linear_params=sum(lin.in_features * lin.out_features for lin in linears),
        head_params=int(head.weight.numel()),
        block_linears=linears,
        other_linears=tuple((n, m.in_features, m.out_features) for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Linear) and id(m) not in in_blocks),
        mlp_width=sum(lin.in_features * lin.share for lin in linears if lin.group == MLP_OUT),
        moe_top_k=top_k,
        sliding_window=getattr(config, "sliding_window", None),
        rope_cache_per_position=rope,  # built with max_positions=1: elements per position
    )


def _linear(name: str, mod: Any, hidden: int, expert_share: float) -> Linear:
    leaf = name.rsplit(".", 1)[-1]
    group = _GROUP_OF_NAME.get(leaf)
    if group is None:  # unknown name: by where it sits and what it reads
        attn = "attn" in name or "attention" in name
        group = (ATTN_IN if mod.in_features == hidden else ATTN_OUT) if attn else (
            MLP_IN if mod.in_features == hidden else MLP_OUT)
    return Linear(name=name, group=group, in_features=int(mod.in_features), out_features=int(mod.out_features),
                  share=expert_share if ".experts." in f".{name}." else 1.0)


if __name__ == "__main__":  # python -m autofit.memory.arch: rewrite archs.yaml after a table or transformers change
    from autofit.models import write_shipped_archs

    write_shipped_archs(table_archs())
