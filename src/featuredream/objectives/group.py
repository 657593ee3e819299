"""Objective groups: the K >= 1 features one dreaming loop optimizes at once.

The loop, the evaluator and the parent-signal pass all work on an :class:`ObjectiveGroup`: K member
objectives whose rows can share one forward pass. Each candidate row belongs to one member (``owner
[b]``, indices into ``singles``) and is scored on that member only. Two groups exist:

* :class:`Single` wraps any :class:`~.objectives.Objective` (SAE latent, direction, query feature,
  callable, weighted sum) as K = 1: a single dream is the K = 1 case of the loop.
* :class:`MultiLatentObjective` is K latents of one SAE with **one** SAE matmul (``[b, s, d_in] @
  [d_in, K]``), so children of K different features share forward passes.

Rows never interact (causal model, right padding, no cross-row reduction), so a row's values equal what
the member objective computes for it alone, up to float rounding of differently shaped matmuls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from ..models.sites import Site
from ..saes.loading import BoundSAE
from .kinds import Objective, ObjectiveOutput, guarded, make_objective, reduce_positions


@runtime_checkable
class ObjectiveGroup(Protocol):
    """K member objectives scored together; ``owner [b]`` says which member scores each row."""

    name: str
    sites: tuple[Site, ...]
    singles: list[Objective]
    """Member k's ordinary objective: results are verified and reported with it."""

    def __len__(self) -> int: ...

    def __call__(
        self, acts: dict[Site, torch.Tensor], mask: torch.Tensor, owner: torch.Tensor
    ) -> ObjectiveOutput:
        """``acts`` (``{site: [b, s, ...]}``), ``mask [b, s]``, ``owner [b]`` -> each row's own ``scores [b]``,
        ``token_acts [b, s]``, ``valid [b, s]``."""
        ...

    def label(self, k: int) -> str | None:
        """How errors name member ``k`` (None: there is only one)."""
        ...


class Single:
    """Any objective as a group of one (K = 1): every row is scored by ``objective``."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.singles = [objective]
        self.name, self.sites = objective.name, tuple(objective.sites)

    def __len__(self) -> int:
        return 1

    def __call__(self, acts: dict, mask: torch.Tensor, owner: torch.Tensor | None = None) -> ObjectiveOutput:
        return self.objective(acts, mask)

    def label(self, k: int) -> str | None:
        return None


def as_group(objective: Objective | ObjectiveGroup) -> ObjectiveGroup:
    """``objective`` itself when it is a group, else ``Single(objective)``."""
    return objective if hasattr(objective, "singles") else Single(objective)


class MultiLatentObjective:
    """``K`` latents of ``sae`` with one kind (``encoder`` / ``decoder``), reduction and norm guard.

    ``singles[k]`` is the ordinary single-latent objective of ``latents[k]``: the reference path re-scores
    each feature's result with it, exactly as :func:`featuredream.dream` does.
    """

    def __init__(
        self,
        sae: BoundSAE,
        latents: Sequence[int],
        kind: str = "encoder",
        reduce: str = "last",
        norm_guard: bool | float = True,
    ):
        if len(latents) == 0:
            raise ValueError("no latents given: valid is at least one latent index")
        self.singles = [make_objective(sae, lat, kind, reduce, norm_guard) for lat in latents]
        self.latents = tuple(o.latent for o in self.singles)
        if len(set(self.latents)) != len(self.latents):
            dup = sorted({x for x in self.latents if self.latents.count(x) > 1})
            raise ValueError(f"latents {dup} given more than once: valid is each latent once")
        self.sae, self.kind = sae, kind
        self.site, self.reduce = sae.site, self.singles[0].reduce
        self.sites = (sae.site,)
        self.name = f"{sae.name}/{len(self.latents)} latents/{kind}"
        if kind == "decoder":
            self.directions = torch.stack([o.direction for o in self.singles], dim=1)  # [d_in, K]

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def norm_cap(self) -> float | str | None:
        """The members' norm cap (one SAE, one guard: the same for all; see :func:`.objectives.resolve_norm_caps`)."""
        return self.singles[0].norm_cap

    def label(self, k: int) -> str | None:
        return f"feature {self.latents[k]}"

    def token_values(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, s, d_in] -> [b, s, K]``: every latent at every position, one matmul."""
        if self.kind == "encoder":
            return self.sae.pre_activation(x, list(self.latents))
        return x.to(self.directions.dtype) @ self.directions

    def __call__(self, acts: dict, mask: torch.Tensor, owner: torch.Tensor | None = None) -> ObjectiveOutput:
        """Scores of ``acts`` (``{site: [b, s, d_in]}``) under ``mask [b, s]``.

        Without ``owner``: ``scores [b, K]``, ``token_acts [b, s, K]``. With ``owner [b]`` (indices into
        ``latents``): each row's own latent, ``scores [b]``, ``token_acts [b, s]``. ``valid [b, s]`` either way.
        """
        x = acts[self.site]
        mask = mask.bool()
        valid = guarded(x, mask, self.norm_cap)
        vals = self.token_values(x).float().masked_fill(~mask[..., None], 0.0)  # [b, s, K]
        if owner is not None:
            b, s, _ = vals.shape
            vals = vals.gather(2, owner.to(vals.device)[:, None, None].expand(b, s, 1))[..., 0]
        return ObjectiveOutput(reduce_positions(vals, valid, mask, self.reduce), vals, valid)


def check_device(objective, dev: torch.device) -> None:
    """ValueError (one line) when ``objective``'s SAE is not on the model's device ``dev``."""
    sae = getattr(objective, "sae", None)
    if sae is not None and sae.sae.W_enc.device != dev:
        raise ValueError(
            f"the SAE is on {sae.sae.W_enc.device} but the model is on {dev}: load it with load_sae(..., model=model)"
        )
