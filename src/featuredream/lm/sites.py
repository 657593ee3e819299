"""Where an activation lives, and capturing it with scoped hooks.

A :class:`Site` names one activation of a decoder-only transformer:

=============  ==========================================================  ====================
kind           what                                                        captured shape
=============  ==========================================================  ====================
resid_pre      input of decoder layer L (= ``hidden_states[L]``)            ``[b, s, d_model]``
resid_post     output of decoder layer L (= ``hidden_states[L+1]``)         ``[b, s, d_model]``
mlp_out        output of layer L's MLP                                      ``[b, s, d_model]``
attn_q         query projection, before rotary (TransformerLens hook_q)     ``[b, s, H, d_head]``
attn_q_rot     query after q-norm (if any) and rotary (what attention uses)   ``[b, s, H, d_head]``
attn_k/attn_v  key / value projection (before rotary for k)                 ``[b, s, H_kv, d_head]``
attn_z         per-head attention output, input of the output projection    ``[b, s, H, d_head]``
=============  ==========================================================  ====================

Without ``head``, head sites are flattened to ``[b, s, H * d_head]`` (the width sae-lens SAEs on a whole
attention layer read). With ``head`` set, they give ``[b, s, d_head]`` for that (query) head; for k / v
the query head is mapped to its key/value group (grouped-query attention).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .models import decoder_layers, text_config

KINDS = ("resid_pre", "resid_post", "mlp_out", "attn_q", "attn_q_rot", "attn_k", "attn_v", "attn_z")
HEAD_KINDS = ("attn_q", "attn_q_rot", "attn_k", "attn_v", "attn_z")

_TL_SUFFIX = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_post": "resid_post",
    "hook_mlp_out": "mlp_out",
    "attn.hook_q": "attn_q",
    "attn.hook_rot_q": "attn_q_rot",
    "attn.hook_k": "attn_k",
    "attn.hook_v": "attn_v",
    "attn.hook_z": "attn_z",
}
_HF_SUFFIX = {
    "": "resid_post",
    "mlp": "mlp_out",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_z",
}


@dataclass(frozen=True, order=True)
class Site:
    """One activation: ``kind`` (see module doc), decoder ``layer`` (0-based), optional query ``head``."""

    kind: str
    layer: int
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}: valid are {', '.join(KINDS)}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"site layer {self.layer!r} must be an integer >= 0")
        if self.head is not None and self.kind not in HEAD_KINDS:
            raise ValueError(f"site kind {self.kind!r} has no heads: heads exist for {', '.join(HEAD_KINDS)}")

    @property
    def hook_name(self) -> str:
        """The TransformerLens-style hook name (what sae-lens SAEs record)."""
        suffix = {v: k for k, v in _TL_SUFFIX.items()}[self.kind]
        return f"blocks.{self.layer}.{suffix}"

    def __str__(self) -> str:
        return self.hook_name + (f"[head {self.head}]" if self.head is not None else "")

    def validate(self, model: nn.Module) -> None:
        """ValueError if this site does not exist in ``model``."""
        cfg = text_config(model)
        if self.layer >= cfg.num_hidden_layers:
            raise ValueError(
                f"site layer {self.layer} is beyond the model: valid layers are 0..{cfg.num_hidden_layers - 1}"
            )
        if self.head is not None and not 0 <= self.head < cfg.num_attention_heads:
            raise ValueError(
                f"head index {self.head} out of range: valid heads are 0..{cfg.num_attention_heads - 1}"
            )


def parse_hook_name(name: str, head: int | None = None) -> Site:
    """Parse a sae-lens / TransformerLens hook name or an HF module path into a :class:`Site`.

    Accepts ``blocks.12.hook_resid_post``, ``blocks.1.attn.hook_q``, ``model.layers.12`` (its output),
    ``model.layers.3.self_attn.q_proj``, and the short form ``resid_post:12`` / ``attn_q:9:3``.
    """
    name = str(name).strip()
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m and m.group(2) in _TL_SUFFIX:
        return Site(
            _TL_SUFFIX[m.group(2)], int(m.group(1)), head if _TL_SUFFIX[m.group(2)] in HEAD_KINDS else None
        )
    m = re.fullmatch(r"(?:[\w.]*\.)?(?:layers|h|blocks)\.(\d+)(?:\.(.+))?", name)
    if m and (m.group(2) or "") in _HF_SUFFIX:
        kind = _HF_SUFFIX[m.group(2) or ""]
        return Site(kind, int(m.group(1)), head if kind in HEAD_KINDS else None)
    m = re.fullmatch(r"(\w+):(\d+)(?::(\d+))?", name)
    if m and m.group(1) in KINDS:
        h = int(m.group(3)) if m.group(3) is not None else head
        return Site(m.group(1), int(m.group(2)), h)
    raise ValueError(
        f"cannot parse hook name {name!r}: valid forms are 'blocks.L.hook_resid_pre|hook_resid_post|hook_mlp_out', "
        "'blocks.L.attn.hook_q|hook_k|hook_v|hook_z', 'model.layers.L[.mlp|.self_attn.q_proj|...]', 'kind:L[:head]'"
    )


class _StopForward(Exception):
    """Raised inside a hook once every requested site is captured, to skip the remaining layers."""


def _attention(layer: nn.Module) -> nn.Module:
    for mod in layer.modules():
        if all(hasattr(mod, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return mod
    raise ValueError(f"{type(layer).__name__} has no attention with q_proj/k_proj/v_proj/o_proj")


def _mlp(layer: nn.Module) -> nn.Module:
    mlp = getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None)
    if mlp is None:
        raise ValueError(f"{type(layer).__name__} has no 'mlp' submodule")
    return mlp


def kv_head(model: nn.Module, head: int) -> int:
    """The key/value head that query ``head`` reads under grouped-query attention."""
    cfg = text_config(model)
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return head // (cfg.num_attention_heads // n_kv)


def _head_dim(model: nn.Module) -> int:
    cfg = text_config(model)
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _first(x):
    return x[0] if isinstance(x, tuple) else x


@contextmanager
def capture(
    model: nn.Module, sites: Sequence[Site], *, stop_early: bool = True
) -> Iterator[dict[Site, torch.Tensor]]:
    """Capture ``sites`` during forward passes run inside the block; hooks are always removed.

    With ``stop_early`` the forward pass is cut short (an exception caught by :func:`run_sites`) as soon as
    every site has been captured, so layers after the last needed one never run.

    Yields a dict filled by each forward pass: ``Site -> tensor`` (shapes in the module doc).
    """
    sites = list(dict.fromkeys(sites))
    for s in sites:
        s.validate(model)
    layers = decoder_layers(model)
    store: dict[Site, torch.Tensor] = {}
    d_head = _head_dim(model)
    handles = []

    def put(site: Site, value: torch.Tensor) -> None:
        if site.head is not None:
            h = kv_head(model, site.head) if site.kind in ("attn_k", "attn_v") else site.head
            value = value[:, :, h]
        elif site.kind in HEAD_KINDS:
            value = value.flatten(-2)
        store[site] = value
        if stop_early and len(store) == len(sites):
            raise _StopForward

    try:  # registered inside try: a failure while registering still removes what was added
        for site in sites:
            layer = layers[site.layer]
            if site.kind == "resid_pre":

                def hook(mod, args, kwargs, site=site):
                    put(site, args[0] if args else kwargs["hidden_states"])

                handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
            elif site.kind == "resid_post":
                handles.append(layer.register_forward_hook(lambda m, a, o, site=site: put(site, _first(o))))
            elif site.kind == "mlp_out":
                handles.append(
                    _mlp(layer).register_forward_hook(lambda m, a, o, site=site: put(site, _first(o)))
                )
            elif site.kind == "attn_z":
                attn = _attention(layer)

                def zhook(mod, args, site=site):
                    z = args[0]
                    put(site, z.view(*z.shape[:-1], -1, d_head))

                handles.append(attn.o_proj.register_forward_pre_hook(zhook))
            elif site.kind == "attn_q_rot":
                attn = _attention(layer)
                rope = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
                if rope is None:
                    raise ValueError(f"{type(attn).__name__}: no apply_rotary_pos_emb found for site {site}")
                state: dict = {}

                def pre(mod, args, kwargs, state=state):
                    state["pe"] = kwargs.get("position_embeddings")

                def qhook(mod, args, out, site=site, state=state, rope=rope, attn=attn):
                    # Qwen3 / Gemma-3 normalize each head's query, OLMo-2 the whole projection; then rotary
                    qn = getattr(attn, "q_norm", None)
                    whole = (
                        qn is not None
                        and getattr(qn, "weight", None) is not None
                        and (qn.weight.shape[-1] == out.shape[-1] != d_head)
                    )
                    q = (qn(out) if whole else out).view(*out.shape[:-1], -1, d_head)
                    if qn is not None and not whole:
                        q = qn(q)
                    q = q.transpose(1, 2)
                    cos, sin = state["pe"]
                    q_rot, _ = rope(q, q, cos, sin)
                    put(site, q_rot.transpose(1, 2))

                handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(attn.q_proj.register_forward_hook(qhook))
            else:
                proj = getattr(
                    _attention(layer), {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj"}[site.kind]
                )

                def phook(mod, args, out, site=site):
                    put(site, out.view(*out.shape[:-1], -1, d_head))

                handles.append(proj.register_forward_hook(phook))
        yield store
    finally:
        for h in handles:
            h.remove()


def run_sites(
    model: nn.Module,
    sites: Sequence[Site],
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    logits: bool = False,
) -> tuple[dict[Site, torch.Tensor], torch.Tensor | None]:
    """One forward pass that returns the captured sites and (if ``logits``) the logits.

    Without ``logits`` the pass stops after the last needed site. Shapes: ids ``[b, s]``, embeds
    ``[b, s, d_model]``, mask ``[b, s]``; logits ``[b, s, vocab]``.
    """
    out = None
    with capture(model, sites, stop_early=not logits) as store:
        try:
            out = model(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                use_cache=False,
            )
        except _StopForward:
            pass
    missing = [str(s) for s in sites if s not in store]
    if missing:
        raise RuntimeError(f"sites not captured: {missing}")
    return dict(store), (out.logits if out is not None and logits else None)


@torch.no_grad()
def key_vector(model: nn.Module, tokenizer, layer: int, head: int, text: str) -> torch.Tensor:
    """The pre-rotary key ``[d_head]`` that query ``head`` of ``layer`` sees at the last token of ``text``.

    Under grouped-query attention this is the key of the head's key/value group. Use it as a
    :class:`~featuredream.objectives.QueryDirection` to ask which prompt makes the head look for it.
    """
    site = Site("attn_k", layer, head)
    site.validate(model)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"key text {text!r} has no tokens: valid is a non-empty text")
    dev = next(model.parameters()).device
    acts, _ = run_sites(model, [site], input_ids=torch.tensor([ids], device=dev))
    return acts[site][0, -1].float().cpu()
