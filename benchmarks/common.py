"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from featuredream.models.xe import sequence_xe
from featuredream.text.corpus import default_corpus, make_windows


@torch.no_grad()
def corpus_xe_quantile(model, tok, length: int = 16, n: int = 256, q: float = 0.9, seed: int = 0) -> float:
    """The ``q`` quantile of XE over ``n`` random ``length``-token windows of the held-out corpus documents."""
    windows, doc_idx = make_windows(tok, default_corpus(), length)
    held = windows[doc_idx % 10 == 3]
    g = torch.Generator().manual_seed(seed)
    sample = held[torch.randperm(len(held), generator=g)[:n]]
    xes = []
    for i in range(0, len(sample), 64):
        ids = sample[i : i + 64]
        logits = model(ids).logits
        xes.append(sequence_xe(logits, ids, torch.ones_like(ids, dtype=torch.bool)))
    return float(torch.quantile(torch.cat(xes), q))


def live_sample(sae, n: int, seed: int = 0, exclude: list[int] = ()) -> list[int]:
    """A fixed-seed sample of ``n`` live latents (fired on the corpus) of a shipped SAE, none in ``exclude``."""
    live = sae.stats.live_latents()
    live = live[~torch.isin(live, torch.tensor(list(exclude), dtype=live.dtype))]
    g = torch.Generator().manual_seed(seed)
    return sorted(live[torch.randperm(len(live), generator=g)[:n]].tolist())


def tune_latents(sae, n: int = 8) -> list[int]:
    """The latents the optimizer's defaults were tuned on (seed 12345): benchmarks/quality.py excludes them."""
    live = sae.stats.live_latents()
    g = torch.Generator().manual_seed(12345)
    return sorted(live[torch.randperm(len(live), generator=g)[:n]].tolist())


@torch.no_grad()
def independent_score(model, tok, sae, latent: int, text: str) -> float:
    """The latent's encoder pre-activation at the last token of ``text``, computed without featuredream's
    evaluator: the residual stream from ``output_hidden_states`` (resid_post of layer L = hidden_states[L+1])
    or the query head from a forward hook on ``q_proj``; the SAE's weights applied by hand. A model that is
    fed a BOS token (Gemma, through ``featuredream.models.bos``) is run plain with the BOS put in front here."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    inner = getattr(model, "inner", model)  # a BOS-conditioned model (lm.bos): the plain model, BOS by hand
    if inner is not model:
        ids = [tok.bos_token_id] + ids
    model, ids = inner, torch.tensor([ids])
    site = sae.site
    if site.kind == "resid_post":
        x = model(input_ids=ids, output_hidden_states=True).hidden_states[site.layer + 1][0, -1]
    elif site.kind == "attn_q" and site.head is not None:
        got = {}
        attn = model.model.layers[site.layer].self_attn
        h = attn.q_proj.register_forward_hook(lambda m, i, o: got.setdefault("q", o))
        try:
            model(input_ids=ids)
        finally:
            h.remove()
        d = attn.head_dim
        x = got["q"][0, -1, site.head * d : (site.head + 1) * d]
    else:
        raise ValueError(f"independent_score: site {site} not covered")
    s = sae.sae
    return float(((x.float() - s.b_dec.float()) @ s.W_enc[:, latent].float()) + s.b_enc[latent].float())


# ---- what every benchmark JSON records: the run's arguments, the machine, the load, the figures ----

DEVICE_PEAK_TFLOPS: list[tuple[str, dict[str, float | None]]] = [
    # Dense (no 2:4 sparsity) peak TFLOP/s by dtype, keyed by a regular expression on
    # torch.cuda.get_device_name(); the first match wins (so "H100 PCIe" before "H100"). float32 is the
    # non-tensor FP32 rate (torch's default: no TF32 for matmuls); "tf32" applies when TF32 is allowed.
    # NVIDIA H100 datasheet (nvidia-h100-datasheet): PCIe BF16 1,513 with sparsity, FP32 51, TF32 756 sparse.
    (r"H100.*PCIe", {"bfloat16": 756.5, "float16": 756.5, "tf32": 378.0, "float32": 51.0}),
    # Same datasheet, H100 NVL: BF16 1,671 with sparsity, FP32 60, TF32 835 sparse.
    (r"H100.*NVL", {"bfloat16": 835.5, "float16": 835.5, "tf32": 417.5, "float32": 60.0}),
    # Same datasheet, H100 SXM ("NVIDIA H100 80GB HBM3"): BF16 1,979 with sparsity, FP32 67, TF32 989 sparse.
    (r"H100", {"bfloat16": 989.5, "float16": 989.5, "tf32": 494.5, "float32": 67.0}),
    # NVIDIA H200 datasheet: H200 NVL BF16 1,671 with sparsity, FP32 60, TF32 835 sparse.
    (r"H200.*NVL", {"bfloat16": 835.5, "float16": 835.5, "tf32": 417.5, "float32": 60.0}),
    # Same datasheet, H200 SXM: BF16 1,979 with sparsity, FP32 67, TF32 989 sparse (H100 SXM's compute).
    (r"H200", {"bfloat16": 989.5, "float16": 989.5, "tf32": 494.5, "float32": 67.0}),
    # NVIDIA A100 datasheet (SXM and PCIe alike): BF16 312 dense (624 sparse), TF32 156, FP32 19.5.
    (r"A100", {"bfloat16": 312.0, "float16": 312.0, "tf32": 156.0, "float32": 19.5}),
    # NVIDIA L40S datasheet: BF16 362.05 dense (733 with sparsity), TF32 183 dense, FP32 91.6.
    (r"L40S", {"bfloat16": 362.05, "float16": 362.05, "tf32": 183.0, "float32": 91.6}),
    # NVIDIA L4 datasheet: BF16 242 with sparsity, TF32 120 sparse, FP32 30.3.
    (r"\bL4\b", {"bfloat16": 121.0, "float16": 121.0, "tf32": 60.0, "float32": 30.3}),
    # NVIDIA A10 datasheet: BF16 250 with sparsity (125 dense), TF32 125 sparse, FP32 31.2. (Not the A10G.)
    (r"\bA10\b", {"bfloat16": 125.0, "float16": 125.0, "tf32": 62.5, "float32": 31.2}),
    # NVIDIA T4 datasheet: mixed-precision FP16 65, FP32 8.1; no bfloat16 tensor cores (no figure).
    (r"\bT4\b", {"bfloat16": None, "float16": 65.0, "tf32": None, "float32": 8.1}),
    # NVIDIA V100 datasheet: SXM2 tensor (FP16) 125, FP32 15.7; PCIe 112 / 14; no bfloat16 tensor cores.
    (r"V100.*PCIE", {"bfloat16": None, "float16": 112.0, "tf32": None, "float32": 14.0}),
    (r"V100", {"bfloat16": None, "float16": 125.0, "tf32": None, "float32": 15.7}),
]


def device_peak_tflops(name: str, dtype: torch.dtype) -> float | None:
    """The datasheet's dense peak TFLOP/s of GPU ``name`` (``torch.cuda.get_device_name()``) for matmuls
    in ``dtype``; None for a device or dtype not in :data:`DEVICE_PEAK_TFLOPS` (then no MFU is printed)."""
    import re

    key = str(dtype).removeprefix("torch.")
    if key == "float32" and torch.backends.cuda.matmul.allow_tf32:
        key = "tf32"
    for pattern, peaks in DEVICE_PEAK_TFLOPS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return peaks.get(key)
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    import platform

    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> dict:
    """The machine a figure was measured on: CPU model, cores, torch threads, device name, versions."""
    import datetime
    import os
    import platform
    import subprocess

    import transformers

    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu: {cpu_model()}"
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "device_name": name,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
    }


def wait_for_idle(max_load: float | None, poll: float = 20.0, timeout: float = 2400.0) -> dict:
    """Wait until the 1-minute load average is below ``max_load`` (poll every ``poll`` s, at most
    ``timeout`` s); None: do not wait. Returns what happened (``contended``: the load never dropped)."""
    import os
    import time

    t0 = time.time()
    load = os.getloadavg()[0]
    if max_load is not None:
        while load >= max_load and time.time() - t0 < timeout:
            print(f"[wait] 1-min load average {load:.2f} >= {max_load}: polling every {poll:g} s", flush=True)
            time.sleep(poll)
            load = os.getloadavg()[0]
    return {
        "max_load": max_load,
        "waited_s": round(time.time() - t0, 1),
        "load_at_start": load,
        "contended": max_load is not None and load >= max_load,
    }


class LoadMonitor:
    """Samples ``os.getloadavg()`` every ``every`` s in a thread while a benchmark runs. The benchmark's
    own threads count in the load: with T torch threads busy, a load near T means nothing else ran."""

    def __init__(self, every: float = 5.0):
        import os
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._every = every
        self.start_load = os.getloadavg()[0]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import os

        while not self._stop.wait(self._every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        import os

        self._stop.set()
        self._thread.join()
        s = self.samples or [self.start_load]
        return {
            "load_start": self.start_load,
            "load_end": os.getloadavg()[0],
            "load_max": max(s),
            "load_mean": sum(s) / len(s),
            "load_samples": len(self.samples),
        }


def add_run_args(ap, name: str) -> None:
    """The options every benchmark takes: ``--out`` (JSON), ``--wait-load``, ``--threads``."""
    ap.add_argument("--out", default=f"benchmarks/{name}.json", help="JSON file written in the same run")
    ap.add_argument(
        "--wait-load",
        type=float,
        default=None,
        help="before timing, wait until the 1-min load average is below this (poll every 20 s)",
    )
    ap.add_argument("--wait-timeout", type=float, default=2400.0, help="longest wait for --wait-load (s)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 when the CPU is shared)")


def begin_run(args) -> tuple[dict, LoadMonitor]:
    """Set threads, wait for an idle machine if asked, and start sampling the load."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    idle = wait_for_idle(getattr(args, "wait_load", None), timeout=getattr(args, "wait_timeout", 2400.0))
    return idle, LoadMonitor()


def end_run(idle: dict, monitor: LoadMonitor) -> dict:
    """The JSON fields on the machine's load: ``idle_wait``, ``load`` and ``contended``: the load was at
    or above the threshold (``--wait-load``, else 1.0) when timing began, or rose during the run to at
    least this run's own torch threads plus that threshold (another job ran at the same time)."""
    load = monitor.stop()
    thr = idle["max_load"] if idle["max_load"] is not None else 1.0
    contended = idle["load_at_start"] >= thr or load["load_max"] >= torch.get_num_threads() + thr
    return {"idle_wait": idle, "load": load, "contended": bool(contended)}


def write_json(path: str | Path, payload: dict) -> None:
    """Write ``payload`` as indented JSON (non-finite floats as null) and say where."""
    import json
    import math

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(payload), indent=1) + "\n")
    print(f"wrote {path}")


def dataset_best_text(sae, tok, latent: int, n_tokens: int = 16) -> str:
    """The latent's best dataset example as text: its stored context up to the activating token, the last
    ``n_tokens`` tokens (what a dream of that length competes with)."""
    st = sae.stats
    pos = int(st.top_pos[latent, 0])
    ids = st.top_tokens[latent, 0, : pos + 1].tolist()
    return tok.decode(ids[-n_tokens:])


def dominance(judge, sae, tok, latent: int, result) -> dict:
    """The readability figures of a dream result against its latent's best dataset example, all from the
    judge (never used in the search): the headline's judge percentile and XE; the dataset example cut to the
    headline's length (its last tokens up to the activating one, in the dreaming model's tokens) and its judge
    percentile and XE; ``dominates``: the headline reaches the dataset maximum and the judge finds it at
    least as natural (judge XE at most the example's; ties count for the dream); ``dominating_dreams``: how
    many of the result's distinct dreams do the same, each against the example cut to its own length."""

    def xe_of(texts):
        return judge.score(texts)

    best = result.best
    example = dataset_best_text(sae, tok, latent, len(best.ids))
    dream_s, ex_s = xe_of([best.text, example])
    ratio = result.ratio if result.feasible else 0.0
    dreams = [d for d in result.dreams if d.above_floor]
    n_dom = 0
    for d in dreams:
        ex = xe_of([dataset_best_text(sae, tok, latent, len(d.prompt.ids))])[0]
        r = result.ratio_of(d.prompt)
        n_dom += bool(r is not None and r >= 1 and (d.judge.xe if d.judge else math.inf) <= ex.xe)
    return dict(
        judge_pct=dream_s.percentile,
        judge_xe=dream_s.xe,
        dataset_text=example,
        dataset_judge_pct=ex_s.percentile,
        dataset_judge_xe=ex_s.xe,
        dominates=bool(ratio is not None and ratio >= 1 and dream_s.xe <= ex_s.xe),
        dominating_dreams=n_dom,
        verbatim=best.text.strip() in dataset_best_text(sae, tok, latent, 64),
    )
