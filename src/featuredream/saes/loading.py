"""Loading SAEs (sae-lens registry, local sae-lens directory, shipped fixtures) bound to a :class:`Site`.

``load_sae`` returns a :class:`BoundSAE`: the sae-lens ``SAE`` plus the site it reads, its name, and the
dataset statistics shipped beside a fixture (per-latent max activation, fire rate, norm cap, top examples).
Checking that an SAE reads the site it declares: :mod:`featuredream.saes.check`.
"""

from __future__ import annotations

import json
import logging
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..models.identity import FIXTURE_ALIASES, FIXTURE_DIR, fixture_names
from ..models.loading import text_config
from ..models.sites import HEAD_KINDS, Site, head_dim, parse_hook_name
from ..models.tl import as_model

log = logging.getLogger(__name__)


class Example(NamedTuple):
    """A dataset example: token ``ids``, ``index`` of the activating token, per-token ``acts``, ``value``.

    ``ids[: index + 1]`` is the example's whole context (its corpus window from the first token up to the
    activating token), ``ids[index + 1 :]`` a few tokens after it for display; ``value`` is the activation
    in that context, so scoring :attr:`context` alone reproduces it.
    """

    ids: list[int]
    index: int
    acts: list[float]
    value: float

    @property
    def context(self) -> list[int]:
        """The tokens up to and including the activating one."""
        return self.ids[: self.index + 1]


@dataclass
class FeatureStats:
    """Dataset statistics of an SAE's latents (shipped with fixtures; see ``train_sae``).

    Tensors: ``max_activation [d_sae]`` (encoder pre-activation), ``max_projection [d_sae]``,
    ``fire_rate [d_sae]``, ``top_tokens [d_sae, K, w]`` (-1 = none), ``top_acts [d_sae, K, w]``,
    ``top_pos [d_sae, K]`` (index of the activating token), ``top_values [d_sae, K]``; the shipped SAEs
    also carry ``xe_lengths [m]`` and ``xe_quantiles [m, 101]`` (see :mod:`featuredream.saes.loading`).
    A shipped example's tokens are its whole context (window start .. activating token, then a few
    tokens after), so ``tokens[:pos + 1]`` scored alone gives ``value``.
    """

    tensors: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self.__dict__["tensors"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def norm_cap(self) -> float | None:
        return self.info.get("norm_cap")

    def has(self, name: str) -> bool:
        return name in self.tensors

    def value(self, name: str, latent: int) -> float | None:
        """One latent's value of statistic ``name`` (e.g. ``max_activation``: the dataset maximum); None
        when these statistics lack it."""
        return float(self.tensors[name][latent]) if name in self.tensors else None

    def has_xe_table(self) -> bool:
        """The statistics carry natural-text XE quantiles by length (``xe_lengths``, ``xe_quantiles``)."""
        return self.has("xe_lengths") and self.has("xe_quantiles")

    def xe_quantile(self, percentile: float, lengths: torch.Tensor) -> torch.Tensor:
        """The ``percentile`` (0..100) of natural-text XE at each of ``lengths`` (tokens), float64; linear
        in the percentile between the tabulated integers, clamped to the tabulated lengths."""
        if not self.has_xe_table():
            raise ValueError("these statistics carry no XE table (xe_lengths / xe_quantiles)")
        q = self.tensors["xe_quantiles"].double()  # [m, 101]
        lo = int(min(max(percentile, 0.0), 100.0) // 1)
        hi, t = min(lo + 1, 100), percentile - lo
        col = q[:, lo] * (1 - t) + q[:, hi] * t  # [m]
        first = int(self.tensors["xe_lengths"][0])
        return col[(lengths.long() - first).clamp(0, len(col) - 1)]

    def live_latents(self) -> torch.Tensor:
        """Indices of latents that fired at least once on the corpus."""
        return (self.tensors["fire_rate"] > 0).nonzero().squeeze(1)

    def examples(self, latent: int) -> list[Example]:
        """Top examples of ``latent``, best first (:class:`Example`: token ids, activating index, per-token
        activations, value).

        Empty when the statistics carry no examples (e.g. only maxima and fire rates)."""
        if not all(self.has(k) for k in ("top_tokens", "top_pos", "top_acts", "top_values")):
            return []
        out = []
        for k in range(self.top_tokens.shape[1]):
            pos = int(self.top_pos[latent, k])
            if pos < 0:
                continue
            toks = self.top_tokens[latent, k]
            n = int((toks >= 0).sum())
            out.append(
                Example(
                    toks[:n].tolist(),
                    pos,
                    self.top_acts[latent, k, :n].float().tolist(),
                    float(self.top_values[latent, k]),
                )
            )
        return out


@dataclass
class BoundSAE:
    """A sae-lens SAE bound to the site it was trained on. Shapes: input ``[..., d_in]``."""

    sae: nn.Module
    site: Site
    name: str
    stats: FeatureStats | None = None

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def context_size(self) -> int | None:
        """Tokens per training window (``metadata.context_size``), None when the SAE does not say."""
        meta = getattr(self.sae.cfg, "metadata", None)
        n = getattr(meta, "context_size", None) if meta is not None else None
        return int(n) if isinstance(n, int) and n > 0 else None

    def check_latent(self, latent: object) -> int:
        """The latent as an int; ValueError naming the valid range otherwise."""
        try:
            lat = operator.index(latent) if not isinstance(latent, str) else int(latent)
        except (TypeError, ValueError):
            raise ValueError(f"latent {latent!r} is not an integer: valid are 0..{self.d_sae - 1}") from None
        if isinstance(latent, bool):
            raise ValueError(f"latent {latent!r} is not an integer: valid are 0..{self.d_sae - 1}")
        if not 0 <= lat < self.d_sae:
            raise ValueError(
                f"latent {lat} out of range for SAE {self.name!r}: valid are 0..{self.d_sae - 1}"
            )
        return lat

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.sae.cfg
        if cfg.normalize_activations == "none" and cfg.reshape_activations == "none":
            x = x.to(self.sae.W_enc.dtype)
            return x - self.sae.b_dec if cfg.apply_b_dec_to_input else x
        return self.sae.process_sae_in(x)

    def _bias(self) -> torch.Tensor:
        for name in ("b_enc", "b_gate"):
            if hasattr(self.sae, name):
                return getattr(self.sae, name)
        raise ValueError(
            f"SAE {self.name!r} ({type(self.sae).__name__}) has no encoder bias: unsupported architecture"
        )

    def pre_activation(
        self, x: torch.Tensor, latents: torch.Tensor | list[int] | None = None
    ) -> torch.Tensor:
        """Encoder pre-activation (before ReLU / TopK / threshold): ``[..., d_in] -> [..., n_latents]``."""
        W, b = self.sae.W_enc, self._bias()
        if latents is not None:
            W, b = W[:, latents], b[latents]
        pre = self._prepare(x) @ W + b
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            dn = self.sae.W_dec.norm(dim=-1)
            pre = pre * (dn if latents is None else dn[latents])
        return pre

    def decoder_direction(self, latent: int) -> torch.Tensor:
        """Unit decoder direction ``[d_in]`` of ``latent``."""
        w = self.sae.W_dec[latent]
        return w / w.norm()

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_in] -> [..., d_in]`` through the SAE's own encode/decode."""
        return self.sae.decode(self.sae.encode(x.to(self.sae.W_enc.dtype)))


def site_width(model: nn.Module, site: Site) -> int:
    """The last dimension of ``site``'s captured activation in ``model`` (see :mod:`featuredream.models.sites`)."""
    cfg = text_config(model)
    if site.kind not in HEAD_KINDS:
        return cfg.hidden_size
    d_head = head_dim(model)
    if site.head is not None:
        return d_head
    n = cfg.num_attention_heads
    if site.kind in ("attn_k", "attn_v"):
        n = getattr(cfg, "num_key_value_heads", None) or n
    return n * d_head


def _load_dir(path: Path, device: str, dtype: str):
    from sae_lens import SAE

    if not (path / "cfg.json").exists():
        raise ValueError(f"SAE directory {str(path)!r} has no cfg.json: valid is a sae-lens SAE directory")
    try:
        return SAE.load_from_disk(str(path), device=device, dtype=dtype)
    except Exception as e:  # sae-lens raises many kinds for a broken file
        raise ValueError(
            f"SAE directory {str(path)!r} could not be read ({type(e).__name__}: {e})"[:300]
        ) from e


def _load_stats(path: Path, required: bool = False) -> FeatureStats | None:
    feats, info = path / "features.safetensors", path / "stats.json"
    if required and not feats.exists():
        raise ValueError(
            f"statistics directory {str(path)!r} has no features.safetensors: valid is a directory written by "
            "'featuredream stats --out DIR'"
        )
    if not feats.exists() and not info.exists():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(feats)) if feats.exists() else {}
        return FeatureStats(tensors, json.loads(info.read_text()) if info.exists() else {})
    except Exception as e:
        raise ValueError(f"SAE statistics in {str(path)!r} could not be read ({type(e).__name__})") from e


def stats_cache_root(model_id: str, sae_id: str) -> Path:
    """Where ``featuredream stats`` caches statistics of this SAE on this model: one folder per
    (corpus digest, tokens) below it."""
    import hashlib

    from ..models.loading import cache_dir

    key = hashlib.sha256(f"{model_id}\n{sae_id}".encode()).hexdigest()[:20]
    return cache_dir() / "stats" / key


def cached_stats_dir(model_id: str, sae_id: str) -> Path | None:
    """The newest cached statistics of this SAE on this model (None when there are none)."""
    root = stats_cache_root(model_id, sae_id)
    found = [p.parent for p in root.glob("*/features.safetensors")] if root.is_dir() else []
    return max(found, key=lambda p: (p / "features.safetensors").stat().st_mtime) if found else None


def find_stats(spec: str, model: nn.Module | None) -> Path | None:
    """Statistics for the SAE ``spec`` made by ``featuredream stats`` for ``model``, from the cache."""
    if model is None:
        return None
    from ..models.identity import loaded_model_identity, sae_weights_identity
    from ..models.loading import model_name

    found = cached_stats_dir(loaded_model_identity(model_name(model)), sae_weights_identity(spec))
    if found is not None:
        log.info("SAE %s: statistics from %s", spec, found)
    return found


def _load_weights(spec_s: str, name: str, device: str, dtype: str):
    """``(sae-lens SAE, statistics beside it or None)`` of a fixture name, a local directory or a
    ``release:sae_id`` of the registry; ValueError naming the valid forms otherwise."""
    if (FIXTURE_DIR / name / "cfg.json").exists():
        return _load_dir(FIXTURE_DIR / name, device, dtype), _load_stats(FIXTURE_DIR / name)
    if Path(spec_s).expanduser().is_dir():
        path = Path(spec_s).expanduser()
        return _load_dir(path, device, dtype), _load_stats(path)
    if ":" in spec_s and not Path(spec_s).exists():
        release, sae_id = spec_s.split(":", 1)
        from sae_lens import SAE

        from ..models.hub import hub_access

        with hub_access() as online:
            try:
                return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype), None
            except Exception as e:
                where = "" if online else " (the hub is not reachable: only the local cache was read)"
                raise ValueError(
                    f"could not load SAE {spec_s!r} from the sae-lens registry{where}: {type(e).__name__}"
                ) from e
    raise ValueError(
        f"unknown SAE spec {spec_s!r}: valid are {', '.join(fixture_names())}, a sae-lens directory, "
        "or 'release:sae_id' from the sae-lens registry"
    )


def load_sae(
    spec: str | Path = "default",
    *,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    dtype: str = "float32",
    head: int | None = None,
    stats_dir: str | Path | None = None,
) -> BoundSAE:
    """Load an SAE and bind it to its site.

    Args:
        spec: a shipped fixture name (``"default"``, see :func:`fixture_names`), a local sae-lens
            directory (``cfg.json`` + ``sae_weights.safetensors``), or ``"release:sae_id"`` from the
            sae-lens registry (used when cached or online).
        model: when given, the site is checked to exist in it and the SAE's width to match it there.
        head: for head sites of SAEs without ``hook_head_index``, the head to bind to.
        stats_dir: a directory of statistics (``featuredream stats --out DIR``). Without it: when ``model``
            is given, the newest that ``featuredream stats`` cached for this SAE on this model
            (:func:`find_stats`), else those beside the SAE (shipped fixtures, ``train-sae``, ``--out``).

    ``model`` may be a TransformerLens ``HookedTransformer`` (see :mod:`featuredream.models.tl`).
    """
    model = as_model(model)
    if device is None:
        device = next(model.parameters()).device if model is not None else "cpu"
    spec_s = str(spec)
    name = FIXTURE_ALIASES.get(spec_s, spec_s)
    sae, stats = _load_weights(spec_s, name, str(device), dtype)
    if stats_dir is not None:
        stats = _load_stats(Path(stats_dir).expanduser(), required=True)
    elif (found := find_stats(spec_s, model)) is not None:
        stats = _load_stats(found)
    meta = sae.cfg.metadata
    hook = meta.hook_name if meta is not None else None
    if not hook:
        raise ValueError(f"SAE {spec_s!r} records no hook_name in its cfg.json: cannot tell its site")
    hidx = meta.hook_head_index if meta.hook_head_index is not None else head
    site = parse_hook_name(hook, head=hidx)
    bound = BoundSAE(sae.eval().requires_grad_(False), site, name, stats)
    if model is not None:
        site.validate(model)
        width = site_width(model, site)
        if bound.d_in != width:
            raise ValueError(
                f"SAE {spec_s!r} has input width {bound.d_in} but the model's {site} has width {width}: "
                "valid is an SAE trained on this model at this site"
            )
    return bound
