"""Models trained with a BOS token in front of every text (Gemma, Gemma-2/3, Llama-3, ...), always fed one.

The engine tokenizes with ``add_special_tokens=False`` everywhere (a prompt is exactly its ids), so such a
model would see every prompt without its ``<bos>``: far out of distribution (Gemma 3 270M: a natural
24-token sentence has XE 2.07 with ``<bos>``, 7.43 without). :func:`with_bos` wraps it in a
:class:`BosModel` when its tokenizer prepends BOS by default (:func:`prepends_bos`); the rest of the package
then works on the real tokens only:

- ``forward(input_ids= | inputs_embeds=, attention_mask=, position_ids=)``: one BOS goes in front of each
  row's first real token (column 0 for unpadded or right-padded rows; for a left-padded row, right after
  its padding, so sliding-window attention sees the distances it sees alone). ``inputs_embeds`` get the
  BOS's embedding exactly as the embedding module outputs it (Gemma's ``sqrt(d_model)`` scale included,
  as the engine's ``inputs_embeds`` are); the mask gets the BOS's 1; ``position_ids`` (when given) shift
  by one with the BOS at 0. So a padded batch equals each unpadded ``[bos] + tokens`` forward;
- outputs cover the real positions only: ``logits [b, s, vocab]``, ``hidden_states`` ``[b, s, d]``;
  captured sites drop the BOS in one place, :func:`featuredream.models.sites.forward_with_capture`, which
  reads :attr:`BosModel.n_prefix` (a hook that *edits* a site, e.g. steering, sees and edits the BOS
  position too). Other fields (``past_key_values``, ``attentions``) keep the BOS position;
- ``generate(ids)``: the BOS in front, stripped from the output (``[b, s + n]``);
- weights, config, parameters, ``name_or_path_`` and the module tree (decoder layers, final norm,
  unembedding) are the inner model's;
- ``hf_kv_cache = False``: the evaluator's prefix cache (a transformers cache of the ids alone) does not
  apply; it falls back to its plain path (:func:`featuredream.evaluation.prefix_cache.supports_prefix`).

Wrapping happens at the boundaries that know the tokenizer: :func:`~.models.load_model`, and
:func:`~.tl.as_model` (``as_model(model, tokenizer)``) at the entry points that take one. A wrapped model is
never wrapped again. TransformerLens models are left as they are (their adapter feeds the ids it is given).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PROBE_TEXT = "Hello world"
"""A short text the tokenizer is asked to encode with its default settings (:func:`prepends_bos`)."""


def prepends_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` puts its BOS token first by default (``tok(text)["input_ids"][0] == bos``)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer(PROBE_TEXT)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def has_own_hooks(model: nn.Module) -> bool:
    """A TransformerLens model (``hook_dict``) or its adapter (``site_hooks``): never wrapped here."""
    return hasattr(model, "hook_dict") or callable(getattr(model, "site_hooks", None))


def with_bos(model: nn.Module, tokenizer) -> nn.Module:
    """``model`` in a :class:`BosModel` when ``tokenizer`` prepends BOS by default; otherwise (and for a
    model already wrapped, or a TransformerLens model) ``model`` itself."""
    if isinstance(model, BosModel) or has_own_hooks(model) or not prepends_bos(tokenizer):
        return model
    return BosModel(model, tokenizer.bos_token_id)


def first_real(mask: torch.Tensor | None, b: int, device: torch.device) -> torch.Tensor:
    """``[b]``: the column of each row's first real token (0 without a mask or for an empty row)."""
    if mask is None:
        return torch.zeros(b, dtype=torch.long, device=device)
    return mask.long().argmax(1)


def insert_prefix(x: torch.Tensor, first: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x [b, s, ...] -> [b, s + 1, ...]``: ``x[:, j]`` goes to column ``j + 1``, and ``fill [...]`` to column
    0 and to column ``first[r]`` of row ``r`` (where the last padding column of a left-padded row was)."""
    b = x.shape[0]
    fill = fill.to(x.dtype).expand(b, 1, *x.shape[2:])
    idx = first.view(b, 1, *([1] * (x.ndim - 2))).expand(b, 1, *x.shape[2:])
    return torch.cat([fill, x], 1).scatter(1, idx, fill)


def prefix_mask(mask: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``mask [b, s] -> [b, s + 1]``: the BOS's 1 at column ``first[r]``, 0 in the column it pushed aside."""
    zero = torch.zeros(mask.shape[0], 1, dtype=mask.dtype, device=mask.device)
    one = torch.ones_like(zero)
    return torch.cat([zero, mask], 1).scatter(1, first[:, None], one)


def prefix_positions(position_ids: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``position_ids [b or 1, s] -> [b, s + 1]``: each real position + 1, the BOS at 0."""
    pos = position_ids.expand(len(first), -1) + 1
    return insert_prefix(pos, first, torch.zeros((), dtype=pos.dtype, device=pos.device))


class BosModel(nn.Module):
    """A transformers causal LM that always conditions on its BOS token (see module doc).

    ``inner``: the model (frozen, eval mode, as :func:`~.models.load_model` leaves it); ``bos_token_id``:
    the id put in front. Attributes it does not define are the inner model's.
    """

    hf_kv_cache = False
    """No transformers key/value cache of the ids alone: the evaluator's prefix cache uses its plain path."""

    n_prefix = 1
    """Positions in front of the real tokens, dropped from captured sites (``sites.forward_with_capture``)."""

    def __init__(self, inner: nn.Module, bos_token_id: int):
        super().__init__()
        if isinstance(inner, BosModel):
            raise ValueError("the model already conditions on BOS: valid is an unwrapped model")
        self.inner = inner
        self.bos_token_id = int(bos_token_id)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__["_modules"].get("inner")
            if inner is None:
                raise
            return getattr(inner, name)

    @property
    def config(self):
        return self.inner.config

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.inner.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.inner.get_decoder()

    def bos_embedding(self, like: torch.Tensor) -> torch.Tensor:
        """``[d_model]``: the embedding module's output for the BOS (scaled, as the module scales)."""
        bos = torch.full((1, 1), self.bos_token_id, dtype=torch.long, device=like.device)
        return self.get_input_embeddings()(bos)[0, 0].to(like.dtype)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        **kwargs,
    ):
        """The inner model's forward on ``[bos] + tokens`` (see module doc); the output's ``logits`` and
        ``hidden_states`` are ``[b, s, ...]`` for the ``s`` real positions."""
        if past_key_values is not None:
            raise ValueError("a BOS-conditioned model takes no key/value cache: valid is None")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [b, s] / inputs_embeds [b, s, d_model]")
        x = input_ids if input_ids is not None else inputs_embeds
        first = first_real(attention_mask, x.shape[0], x.device)
        if input_ids is not None:
            bos = torch.tensor(self.bos_token_id, device=x.device)
            kwargs["input_ids"] = insert_prefix(input_ids, first, bos)
        else:
            kwargs["inputs_embeds"] = insert_prefix(inputs_embeds, first, self.bos_embedding(inputs_embeds))
        if attention_mask is not None:
            kwargs["attention_mask"] = prefix_mask(attention_mask, first)
        if position_ids is not None:
            kwargs["position_ids"] = prefix_positions(position_ids, first)
        out = self.inner(**kwargs)
        if getattr(out, "logits", None) is not None:
            out.logits = out.logits[:, self.n_prefix :]
        if getattr(out, "hidden_states", None) is not None:
            out.hidden_states = tuple(h[:, self.n_prefix :] for h in out.hidden_states)
        return out

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """``[b, s + n]``: ``input_ids [b, s]`` and their continuation, generated after a BOS (stripped)."""
        first = first_real(attention_mask, input_ids.shape[0], input_ids.device)
        bos = torch.tensor(self.bos_token_id, device=input_ids.device)
        ids = insert_prefix(input_ids, first, bos)
        mask = None if attention_mask is None else prefix_mask(attention_mask, first)
        return self.inner.generate(ids, attention_mask=mask, **kwargs)[:, self.n_prefix :]
