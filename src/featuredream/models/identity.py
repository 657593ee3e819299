"""Stable identities of a model spec and an SAE spec, and the digest of a file or of a set of documents.

A sweep store compares them (a store of one model or SAE is refused for another), and the statistics
cache is keyed by them (``featuredream stats`` writes, ``load_sae`` finds). A local directory is known by
its files' contents (size + first MB of each), so moving it keeps its identity for the cache
(:func:`content_identity`) while the sweep store also records where it is (:func:`dir_identity`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from .loading import DEFAULT_ALIASES, DEFAULT_MODEL, TL_PREFIX, split_tl

FIXTURE_DIR = Path(__file__).parent.parent / "data" / "saes"
FIXTURE_ALIASES = {"default": "smollm2-res12", "query": "smollm2-q18h6"}


def fixture_names() -> list[str]:
    """Names of the SAEs shipped in the package (plus the alias ``default``)."""
    names = sorted(p.name for p in FIXTURE_DIR.glob("*") if (p / "cfg.json").exists())
    return list(FIXTURE_ALIASES) + names


def file_digest(path: Path, limit: int = 1 << 20) -> str:
    """sha256 of a file's size and first ``limit`` bytes (cheap for multi-GB weights), 16 hex chars."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(limit))
    return h.hexdigest()[:16]


def _weight_files(path: Path, names: tuple[str, ...] | None) -> list[str]:
    files = sorted(os.listdir(path))
    if names is not None:
        return [n for n in files if n in names]
    return [n for n in files if (path / n).is_file() and n.endswith((".json", ".safetensors"))]


def content_identity(path: Path, names: tuple[str, ...] | None = None) -> str:
    """The digests of a directory's ``.json`` / ``.safetensors`` files (or of ``names`` only), without its
    location."""
    return "|".join(f"{n}:{file_digest(path / n)}" for n in _weight_files(path, names))


def dir_identity(path: Path) -> str:
    """A directory's resolved location and the digests of its ``.json`` / ``.safetensors`` files."""
    return "|".join([str(path.resolve()), content_identity(path)])


def model_identity(model: str | None) -> str:
    """A stable identity of a model spec: the default's name, a local directory's files, or the name
    (``tl:`` kept in front for a TransformerLens model)."""
    tl, model = split_tl(model)
    if tl:
        return TL_PREFIX + model_identity(model)
    if model is None or model in DEFAULT_ALIASES:
        return DEFAULT_MODEL
    if Path(model).expanduser().is_dir():
        return f"dir:{dir_identity(Path(model).expanduser())}"
    return model


def sae_identity(spec: str) -> tuple[str, Path | None]:
    """A stable identity of an SAE spec, and its directory when it has one (fixture or local dir)."""
    name = FIXTURE_ALIASES.get(spec, spec)
    if Path(name).name == name and (FIXTURE_DIR / name / "cfg.json").exists():
        return f"fixture:{name}", FIXTURE_DIR / name
    p = Path(spec).expanduser()
    if p.is_dir():
        return f"dir:{dir_identity(p)}", p
    return f"spec:{spec}", None


SAE_FILES = ("cfg.json", "sae_weights.safetensors")


def sae_weights_identity(spec: str) -> str:
    """An SAE known by what it computes: a fixture's name, a directory's ``cfg.json`` and weights (not its
    location, nor statistics written beside it), or a registry id."""
    ident, path = sae_identity(spec)
    if ident.startswith("dir:") and path is not None:
        return "weights:" + content_identity(path, SAE_FILES)
    return ident


def loaded_model_identity(name: str) -> str:
    """The identity of a loaded model from its recorded name (``model_name``), ``tl:`` dropped: a
    TransformerLens model computes the same activations as the transformers model it was made from."""
    _, inner = split_tl(name)
    inner = None if inner in DEFAULT_ALIASES else inner
    if inner is not None and Path(str(inner)).expanduser().is_dir():
        return "weights:" + content_identity(Path(str(inner)).expanduser())
    return DEFAULT_MODEL if inner is None else str(inner)


def texts_digest(docs: Iterable[str]) -> str:
    """sha256 of documents (each length-prefixed, so splitting differently changes it), 16 hex chars."""
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """A model's identity for caches: its recorded name (see :func:`~.identity.loaded_model_identity`)
    plus a digest of its first embedding rows, so two in-memory models that share a name (tests' tiny
    models, a fine-tuned copy) never share a cache entry."""
    from .loading import model_name

    emb = model.get_input_embeddings().weight.detach()
    head = emb[:64].float().cpu().contiguous().numpy().tobytes()
    bos = (
        "|bos" if getattr(model, "n_prefix", 0) else ""
    )  # a BOS-conditioned model (models.bos) computes otherwise
    return f"{loaded_model_identity(model_name(model))}|emb:{hashlib.sha256(head).hexdigest()[:12]}{bos}"
