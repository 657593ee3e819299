"""The CLI's raw-direction target: ``--site`` with ``--direction FILE`` or ``--key-text TEXT``.

A direction file is JSON (a list of numbers) or safetensors holding exactly one 1-D tensor: nothing
loaded executes code. ``--key-text`` takes, for one head's query site, the (pre-rotary) key that head's
key/value group computes at the last token of the text, so the dream answers "which prompt makes this
head look for that?" (exactly the attention logit at relative offset 0; rotary rotates it with distance).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.sites import Site, key_vector, parse_hook_name
from ..objectives.kinds import QUERY_KINDS, DirectionObjective, QueryDirection
from ..saes.loading import site_width


def load_direction(path: str | Path) -> torch.Tensor:
    """A 1-D float32 tensor from ``.json`` (list of numbers) or ``.safetensors`` (one tensor)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"direction file {str(p)!r} does not exist: valid is a .json or .safetensors file")
    if p.suffix == ".json":
        try:
            vec = torch.tensor(json.loads(p.read_text()), dtype=torch.float32)
        except (ValueError, TypeError, RuntimeError):
            raise ValueError(f"direction file {str(p)!r} is not a JSON list of numbers") from None
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except Exception as e:
            raise ValueError(f"direction file {str(p)!r} could not be read ({type(e).__name__})") from None
        if len(tensors) != 1:
            raise ValueError(
                f"direction file {str(p)!r} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}): "
                "valid is exactly one"
            )
        vec = next(iter(tensors.values())).float()
    else:
        raise ValueError(f"direction file {str(p)!r} has suffix {p.suffix!r}: valid are .json, .safetensors")
    if vec.ndim != 1:
        raise ValueError(f"direction in {str(p)!r} has shape {tuple(vec.shape)}: valid is a 1-D vector")
    return vec


def direction_objective(args, model: torch.nn.Module, tokenizer):
    """The objective for ``--site`` + ``--direction`` / ``--key-text`` (ValueError on bad input)."""
    if args.site is None:
        raise ValueError(
            "--direction / --key-text need --site (e.g. attn_q:18:6 for layer 18, head 6's query)"
        )
    if args.direction is not None and args.key_text is not None:
        raise ValueError("give either --direction or --key-text, not both")
    if getattr(args, "feature", None) is not None:
        raise ValueError("--feature selects an SAE latent; with --direction / --key-text leave it out")
    site = parse_hook_name(args.site)
    site.validate(model)
    query = site.kind in QUERY_KINDS and site.head is not None
    if args.key_text is not None:
        if site.kind != "attn_q" or site.head is None:
            raise ValueError(
                f"--key-text needs a pre-rotary query site of one head (attn_q:L:H), got {args.site!r}: "
                "the key of key_vector is taken before rotary, so it is compared with the pre-rotary query"
            )
        vec = key_vector(model, tokenizer, site.layer, site.head, args.key_text)
    else:
        vec = load_direction(args.direction)
    guard = not getattr(args, "no_norm_guard", False)
    if query:
        return QueryDirection(
            site.layer,
            site.head,
            vec,
            args.reduce,
            rotary=site.kind == "attn_q_rot",
            model=model,
            norm_guard=guard,
        )
    width = site_width(model, site)
    if vec.numel() != width:
        raise ValueError(
            f"direction has {vec.numel()} numbers but {site} has width {width}: valid is a vector of {width}"
        )
    return DirectionObjective(Site(site.kind, site.layer, site.head), vec, args.reduce, norm_guard=guard)
