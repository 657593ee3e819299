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

One resolver, :func:`hook_site`, knows where each kind lives in a model (which module, its input or its
output); activation capture (:func:`capture`, :func:`forward_with_capture`) and steering
(:func:`featuredream.observe.tracing.steer`) both go through it. A model that brings its own hook points
(a TransformerLens model wrapped by :mod:`.tl`: ``site_hooks`` / ``hook_point``) is asked for them there,
in one place (:func:`native_sites`). A model that conditions on a BOS it adds itself (:mod:`.bos`) has the
BOS position dropped from captures in one place too (:func:`forward_with_capture`).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .loading import decoder_layers, text_config
from .tl import as_model

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
        model = as_model(model)
        cfg = text_config(model)
        if self.layer >= cfg.num_hidden_layers:
            raise ValueError(
                f"site layer {self.layer} is beyond the model: valid layers are 0..{cfg.num_hidden_layers - 1}"
            )
        if self.head is not None and not 0 <= self.head < cfg.num_attention_heads:
            raise ValueError(
                f"head index {self.head} out of range: valid heads are 0..{cfg.num_attention_heads - 1}"
            )
        if native_sites(model):
            model.hook_point(self)  # ValueError naming the site when the model has no such hook point


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


def native_sites(model: nn.Module) -> bool:
    """Whether ``model`` resolves sites at its own hook points (``site_hooks(site, fn)``, ``hook_point(site)``,
    ``output_projection(layer)``: a TransformerLens model wrapped by :mod:`.tl`)."""
    return callable(getattr(model, "site_hooks", None))


class StopForward(Exception):
    """Raised inside a hook once every requested site is captured, to skip the remaining layers.

    Caught in one place: :func:`forward_with_capture`."""


def attention(layer: nn.Module) -> nn.Module:
    """The attention module of a decoder ``layer`` (the one with ``q_proj / k_proj / v_proj / o_proj``)."""
    for mod in layer.modules():
        if all(hasattr(mod, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return mod
    raise ValueError(f"{type(layer).__name__} has no attention with q_proj/k_proj/v_proj/o_proj")


def mlp(layer: nn.Module) -> nn.Module:
    """The MLP (feed-forward) module of a decoder ``layer``."""
    mod = getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None)
    if mod is None:
        raise ValueError(f"{type(layer).__name__} has no 'mlp' submodule")
    return mod


def kv_head(model: nn.Module, head: int) -> int:
    """The key/value head that query ``head`` reads under grouped-query attention."""
    cfg = text_config(model)
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return head // (cfg.num_attention_heads // n_kv)


def head_dim(model: nn.Module) -> int:
    """Width of one attention head."""
    cfg = text_config(model)
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def head_columns(model: nn.Module, site: Site) -> slice | None:
    """The columns of ``site.head`` in the site's flattened ``[..., H * d_head]`` activation (for k / v: the
    head's key/value group); None when the site has no head."""
    if site.head is None:
        return None
    h = kv_head(model, site.head) if site.kind in ("attn_k", "attn_v") else site.head
    d = head_dim(model)
    return slice(h * d, (h + 1) * d)


EDITABLE_KINDS = ("resid_pre", "resid_post", "mlp_out", "attn_z", "attn_q", "attn_k", "attn_v")
"""Kinds whose activation a hook can replace: ``attn_q_rot`` is computed from the query inside attention."""

SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def hook_site(model: nn.Module, site: Site, fn: SiteFn) -> list[RemovableHandle]:
    """The one hook-point resolver: register hooks that call ``fn(x)`` at ``site`` on every forward pass.

    ``x`` is the site's whole activation ``[b, s, width]``, attention heads flattened to ``H * d_head``
    (``site.head`` is not applied: see :func:`head_columns`). When ``fn`` returns a tensor it replaces the
    activation in the forward pass (any kind in :data:`EDITABLE_KINDS`; for ``attn_q_rot``: ValueError).
    ValueError if the site does not exist in ``model``. Returns the handles: the caller removes them.
    """
    model = as_model(model)
    site.validate(model)
    if site.kind not in EDITABLE_KINDS:
        fn = _read_only(site, fn)
    if native_sites(model):
        return model.site_hooks(site, fn)
    layer = decoder_layers(model)[site.layer]
    if site.kind == "attn_q_rot":
        return _hook_rotary_query(model, site, attention(layer), fn)
    if site.kind in ("resid_pre", "attn_z"):  # the input of the layer / of the output projection

        def pre(mod, args, kwargs):
            new = fn(args[0] if args else kwargs["hidden_states"])
            if new is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        module = layer if site.kind == "resid_pre" else attention(layer).o_proj
        return [module.register_forward_pre_hook(pre, with_kwargs=True)]

    def post(mod, args, out):
        new = fn(out[0] if isinstance(out, tuple) else out)
        if new is None:
            return None
        return (new, *out[1:]) if isinstance(out, tuple) else new

    if site.kind == "resid_post":
        module = layer
    elif site.kind == "mlp_out":
        module = mlp(layer)
    else:  # attn_q / attn_k / attn_v: the projection's output, before rotary
        module = getattr(attention(layer), site.kind[-1] + "_proj")
    return [module.register_forward_hook(post)]


def _read_only(site: Site, fn: SiteFn) -> SiteFn:
    def read(x: torch.Tensor) -> None:
        if fn(x) is not None:
            raise ValueError(
                f"{site} cannot be replaced (computed inside attention): valid kinds are {', '.join(EDITABLE_KINDS)}"
            )

    return read


def output_projection(model: nn.Module, layer: int) -> torch.Tensor:
    """Layer ``layer``'s attention output projection ``[d_model, H * d_head]`` (maps ``attn_z`` to the
    residual stream)."""
    if native_sites(model):
        return model.output_projection(layer)
    return attention(decoder_layers(model)[layer]).o_proj.weight


def _hook_rotary_query(model: nn.Module, site: Site, attn: nn.Module, fn: SiteFn) -> list[RemovableHandle]:
    """``attn_q_rot``: the query after q-norm (if any) and rotary, recomputed from ``q_proj``'s output with the
    attention's own ``apply_rotary_pos_emb`` and the layer's position embeddings (read only)."""
    rope = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if rope is None:
        raise ValueError(f"{type(attn).__name__}: no apply_rotary_pos_emb found for site {site}")
    d_head = head_dim(model)
    state: dict = {}

    def pre(mod, args, kwargs):
        state["pe"] = kwargs.get("position_embeddings")

    def qhook(mod, args, out):
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
        fn(q_rot.transpose(1, 2).flatten(-2))  # read only (see hook_site)

    return [
        attn.register_forward_pre_hook(pre, with_kwargs=True),
        attn.q_proj.register_forward_hook(qhook),
    ]


@contextmanager
def capture(
    model: nn.Module, sites: Sequence[Site], *, stop_early: bool = True
) -> Iterator[dict[Site, torch.Tensor]]:
    """Capture ``sites`` during forward passes run inside the block; hooks are always removed.

    With ``stop_early`` the forward pass is cut short (:class:`StopForward`, caught by
    :func:`forward_with_capture`) as soon as every site has been captured, so layers after the last needed
    one never run.

    Yields a dict filled by each forward pass: ``Site -> tensor`` (shapes in the module doc).
    """
    model = as_model(model)
    sites = list(dict.fromkeys(sites))
    cols = {s: head_columns(model, s) for s in sites}
    store: dict[Site, torch.Tensor] = {}
    handles: list[RemovableHandle] = []

    def put(site: Site, x: torch.Tensor) -> None:
        store[site] = x if cols[site] is None else x[..., cols[site]]
        if stop_early and len(store) == len(sites):
            raise StopForward

    try:  # registered inside try: a failure while registering still removes what was added
        for site in sites:
            handles += hook_site(model, site, functools.partial(put, site))
        yield store
    finally:
        for h in handles:
            h.remove()


def forward_with_capture(
    model: nn.Module, sites: Sequence[Site], *, stop_early: bool = True, **model_kwargs
) -> tuple[dict[Site, torch.Tensor], Any | None]:
    """``model(**model_kwargs)`` with ``sites`` captured: returns ``(acts, output)``.

    With ``stop_early`` the pass stops after the last needed site and ``output`` is None (unless some site
    was never reached: then the pass ran to the end). ``acts``: ``Site -> tensor`` (shapes in the module
    doc); a site the pass never reached is missing from it.

    A model that puts positions in front of the real tokens (``n_prefix``: the BOS of a
    :class:`~.bos.BosModel`) has them dropped here, the one place: ``acts`` are ``[b, s, ...]`` for the ``s``
    real tokens, like its output's logits.
    """
    model = as_model(model)
    out = None
    with capture(model, sites, stop_early=stop_early) as store:
        try:
            out = model(**model_kwargs)
        except StopForward:
            pass
    n = getattr(model, "n_prefix", 0)
    return {site: x[:, n:] for site, x in store.items()}, out


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
    model = as_model(model)
    acts, out = forward_with_capture(
        model,
        sites,
        stop_early=not logits,
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        use_cache=False,
    )
    missing = [str(s) for s in sites if s not in acts]
    if missing:
        raise RuntimeError(f"sites not captured: {missing}")
    return acts, (out.logits if out is not None and logits else None)


@torch.no_grad()
def key_vector(model: nn.Module, tokenizer, layer: int, head: int, text: str) -> torch.Tensor:
    """The pre-rotary key ``[d_head]`` that query ``head`` of ``layer`` sees at the last token of ``text``.

    Under grouped-query attention this is the key of the head's key/value group. Use it as a
    :class:`~featuredream.objectives.kinds.QueryDirection` to ask which prompt makes the head look for it.
    """
    model = as_model(model, tokenizer)
    site = Site("attn_k", layer, head)
    site.validate(model)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"key text {text!r} has no tokens: valid is a non-empty text")
    dev = next(model.parameters()).device
    acts, _ = run_sites(model, [site], input_ids=torch.tensor([ids], device=dev))
    return acts[site][0, -1].float().cpu()
