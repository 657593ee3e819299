"""TransformerLens models (``HookedTransformer``, sae-lens' ``HookedSAETransformer``) as featuredream models.

:func:`as_model` wraps one in a :class:`TLModel`: an ``nn.Module`` that presents what the rest of the
package uses from a transformers causal LM, so the engine never branches on the model type:

- ``config`` (``get_text_config()``: layers, heads, key/value heads, head width, ``hidden_size``), its
  parameters (device, dtype), ``model_name`` (``cfg.model_name``);
- ``get_input_embeddings().weight`` = ``W_E [vocab, d_model]`` (TransformerLens folds Gemma's embedding
  scale into ``W_E``, so the scale is 1); ``get_output_embeddings().weight`` = ``W_U^T [vocab, d_model]``;
- ``forward(input_ids= | inputs_embeds=, attention_mask=)`` returning ``.logits [b, s, vocab]``;
  ``inputs_embeds`` replace the output of ``hook_embed`` (so positional embeddings still apply) and carry
  gradients; positions come from the attention mask (TransformerLens' own rule, = ``cumsum(mask) - 1``);
- sites at its own hook points (:meth:`TLModel.site_hooks`): ``Site.hook_name`` is the TransformerLens
  name (``blocks.L.hook_resid_post``, ``blocks.L.attn.hook_q`` ``[b, s, H, d_head]`` flattened to
  ``[b, s, H * d_head]``, ...). Early exit: the capture's ``StopForward`` raised from the hook stops the
  pass after the objective's layer, as ``stop_at_layer`` would;
- ``generate`` for model samples and steering (TransformerLens' own sampler);
- ``hf_kv_cache = False``: the evaluator's transformers prefix cache does not apply; it uses its plain path.

The wrapper puts the model in eval mode and freezes its parameters (as :func:`~.models.load_model` does).
``transformer-lens`` is optional: ``pip install 'featuredream[tl]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from .bos import with_bos

INSTALL_HINT = "pip install 'featuredream[tl]'"


def require_transformer_lens():
    """The ``transformer_lens`` module; ImportError in one line saying how to install it."""
    try:
        import transformer_lens
    except ImportError:
        raise ImportError(
            f"TransformerLens models need the transformer-lens package: {INSTALL_HINT}"
        ) from None
    return transformer_lens


def is_tl_model(model: object) -> bool:
    """A ``HookedTransformer`` (or subclass, e.g. ``HookedSAETransformer``), told without importing it."""
    return any(
        c.__name__ == "HookedTransformer" and c.__module__.startswith("transformer_lens")
        for c in type(model).__mro__
    )


def as_model(model, tokenizer=None):
    """``model`` itself, or a :class:`TLModel` around it when it is a TransformerLens model. Given the
    ``tokenizer``, a transformers model whose tokenizer prepends BOS by default comes in a
    :class:`~.bos.BosModel` (:func:`~.bos.with_bos`: never twice; TransformerLens models are left as they are)."""
    if is_tl_model(model):
        return TLModel(model)
    return model if tokenizer is None else with_bos(model, tokenizer)


def load_tl_model(name: str, *, device: str | None = None, dtype: str | torch.dtype = "float32", **kwargs):
    """``HookedTransformer.from_pretrained_no_processing(name)``: no weight folding or centering, so hook values
    equal the transformers model's. Needs the weights in the Hugging Face cache or online."""
    require_transformer_lens()
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype, **kwargs)


def hooked_from_hf(hf_model: nn.Module, tokenizer=None):
    """A ``HookedTransformer`` with the weights of a loaded transformers causal LM (any architecture
    TransformerLens converts), offline: TransformerLens' own config and weight conversion, no folding or
    centering, so its hook values equal the transformers model's. ValueError for an architecture it does
    not convert."""
    require_transformer_lens()
    import copy
    import tempfile

    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    p0 = next(hf_model.parameters())
    config = copy.deepcopy(hf_model.config)
    config.architectures = config.architectures or [type(hf_model).__name__]
    with tempfile.TemporaryDirectory() as d:  # TransformerLens reads a config by name or from a directory
        config.save_pretrained(d)
        try:
            cfg = loading.get_pretrained_model_config(d, device=str(p0.device), dtype=p0.dtype)
        except NotImplementedError as e:
            raise ValueError(f"TransformerLens cannot convert this model: {e}") from None
        state = loading.get_pretrained_state_dict(d, cfg, hf_model=hf_model)
    cfg.model_name = getattr(hf_model, "name_or_path_", None) or cfg.model_name
    cfg.tokenizer_name = None  # the temporary directory is gone: the tokenizer is the one given, if any
    tl = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    tl.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return tl.eval()


class TLConfig:
    """The transformers-style config fields featuredream reads, from a ``HookedTransformerConfig``."""

    def __init__(self, cfg):
        self.num_hidden_layers = int(cfg.n_layers)
        self.num_attention_heads = int(cfg.n_heads)
        self.num_key_value_heads = int(cfg.n_key_value_heads or cfg.n_heads)
        self.head_dim = int(cfg.d_head)
        self.hidden_size = int(cfg.d_model)
        self.vocab_size = int(cfg.d_vocab)
        self._name_or_path = str(cfg.model_name)

    def get_text_config(self) -> TLConfig:
        return self


class WeightView(NamedTuple):
    """An embedding-like view: ``weight [vocab, d_model]``."""

    weight: torch.Tensor


class TLOutput(NamedTuple):
    """What a forward pass returns: ``logits [b, s, vocab]``."""

    logits: torch.Tensor


class TLModel(nn.Module):
    """A TransformerLens model behind the interface featuredream uses (see module doc). ``tl``: the model."""

    hf_kv_cache = False
    """No transformers key/value cache: the evaluator's prefix cache falls back to its plain path."""

    def __init__(self, tl: nn.Module):
        require_transformer_lens()
        super().__init__()
        self.tl = tl.eval().requires_grad_(False)
        self.config = TLConfig(tl.cfg)
        self.name_or_path_ = str(tl.cfg.model_name)
        self.tokenizer = getattr(tl, "tokenizer", None)

    # ------------------------------------------------------------------------------------- weights

    def get_input_embeddings(self) -> WeightView:
        return WeightView(self.tl.W_E)

    def get_output_embeddings(self) -> WeightView:
        return WeightView(self.tl.W_U.T)

    def get_decoder(self) -> nn.Module:
        """The module whose last norm-like child is the final norm (``ln_final``)."""
        return self.tl

    def output_projection(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s attention output projection as ``[d_model, H * d_head]`` (``W_O`` is
        ``[H, d_head, d_model]``)."""
        W_O = self.tl.blocks[layer].attn.W_O
        return W_O.reshape(-1, W_O.shape[-1]).T

    # --------------------------------------------------------------------------------------- sites

    def hook_point(self, site) -> nn.Module:
        """The ``HookPoint`` of ``site`` (``site.hook_name``); ValueError naming the site if it has none."""
        hp = self.tl.hook_dict.get(site.hook_name)
        if hp is None:
            kinds = sorted({n.split(".", 2)[-1] for n in self.tl.hook_dict if n.startswith("blocks.0.")})
            raise ValueError(
                f"TransformerLens model {self.name_or_path_!r} has no hook point {site.hook_name} for site "
                f"{site}: valid per-layer hooks are {', '.join(kinds)}"
            )
        return hp

    def site_hooks(self, site, fn: Callable[[torch.Tensor], Any]) -> list:
        """Register ``fn(x)`` at ``site``'s hook point (``x [b, s, width]``, heads flattened); a returned
        tensor replaces the activation. Returns the handles: the caller removes them."""

        def post(mod, args, out: torch.Tensor):
            new = fn(out.flatten(-2) if out.ndim == 4 else out)  # [b, s, H, d_head] -> [b, s, H * d_head]
            return None if new is None else new.reshape(out.shape)

        return [self.hook_point(site).register_forward_hook(post)]

    # ------------------------------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Any = None,
    ) -> TLOutput:
        """Logits of ``input_ids [b, s]`` or ``inputs_embeds [b, s, d_model]`` (mask ``[b, s]``, default all
        real). ``position_ids``, when given, must be the mask's (``cumsum - 1``): TransformerLens derives them."""
        if past_key_values is not None:
            raise ValueError("TransformerLens models take no transformers key/value cache: valid is None")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [b, s] / inputs_embeds [b, s, d_model]")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        dev = input_ids.device if input_ids is not None else inputs_embeds.device
        # an explicit mask: otherwise TransformerLens infers one from pad tokens when its tokenizer pads left
        mask = (
            torch.ones(shape, dtype=torch.long, device=dev)
            if attention_mask is None
            else attention_mask.long()
        )
        if position_ids is not None and not torch.equal(
            position_ids.to(dev), (mask.cumsum(1) - 1).clamp_min(0).expand_as(position_ids)
        ):
            raise ValueError(
                "TransformerLens models take their positions from the attention mask: "
                "valid position_ids are None or cumsum(mask) - 1"
            )
        if inputs_embeds is None:
            return TLOutput(self.tl(input_ids, attention_mask=mask))
        tokens = torch.zeros(shape, dtype=torch.long, device=dev)
        handle = self.tl.hook_embed.register_forward_hook(lambda m, a, out: inputs_embeds.to(out.dtype))
        try:
            return TLOutput(self.tl(tokens, attention_mask=mask))
        finally:
            handle.remove()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int,
        min_new_tokens: int | None = None,
        do_sample: bool = False,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """``[b, s + n]``: ``input_ids [b, s]`` (no padding) and their continuation, with TransformerLens'
        sampler. Stops at the tokenizer's EOS unless ``min_new_tokens`` is set (then runs all ``max_new_tokens``)."""
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("TransformerLens generation takes unpadded input_ids: valid is an all-ones mask")
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return self.tl.generate(
            input_ids,
            max_new_tokens=max_new_tokens,
            stop_at_eos=eos is not None and not min_new_tokens,
            eos_token_id=eos,
            do_sample=do_sample,
            top_k=top_k,
            top_p=top_p,
            temperature=1.0 if temperature is None else temperature,
            verbose=False,
        )
