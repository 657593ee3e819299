"""The HTML feature card on a tiny model: self-contained, escaped, every figure a decodable PNG; renders in
headless Chromium when it is installed (the structural checks do not need it)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers.saes import TEXT, write_sae_dir

from featuredream.engine.config import DreamConfig, log_penalties
from featuredream.engine.dream import dream
from featuredream.objectives.kinds import SAEEncoder
from featuredream.observe.card import CardData, CardExample, card_data, neuronpedia_json
from featuredream.observe.card_html import feature_card, render_card
from featuredream.observe.top_examples import Example, corpus_stats, minimal_context
from featuredream.saes.loading import load_sae

EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama, tiny_tokenizer):
    root = tmp_path_factory.mktemp("card")
    sae = load_sae(write_sae_dir(root / "sae"), model=tiny_llama)
    (root / "corpus.txt").write_text(TEXT)
    stats = corpus_stats(tiny_llama, tiny_tokenizer, sae, root / "corpus.txt", ctx=32, k=4, progress=False)
    feature = int(stats.max_activation.argmax())  # fires on the corpus, so the dream ratio is defined
    cfg = DreamConfig(
        iters=3,
        n_children=12,
        min_tokens=3,
        max_tokens=10,
        progress=False,
        n_start_samples=2,
        gcg_topk=16,
        init_prompt="The quick brown fox",
        pareto=log_penalties(0.1, 10, 2),
    )
    result = dream(tiny_llama, tiny_tokenizer, SAEEncoder(sae, feature), cfg)
    # a token that must be shown as text, never run
    best = dataclasses.replace(
        result.best, tokens=[EVIL] + result.best.tokens[1:], text=EVIL + result.best.text
    )
    result = dataclasses.replace(result, best=best, dataset_max=float(stats.max_activation[feature]))
    out = root / "card.html"
    page = feature_card(tiny_llama, tiny_tokenizer, sae, feature, result, out, stats=stats, max_new_tokens=6)
    return dict(feature=feature, root=root, sae=sae, stats=stats, result=result, out=out, page=page)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def structural_problems(page: str, n_figures: int) -> list[str]:
    """What is wrong with a card page, without a browser (empty list: fine)."""
    from PIL import Image

    p = _Tags()
    p.feed(page)
    problems = []
    imgs = [a for t, a in p.tags if t == "img"]
    if len(imgs) != n_figures:
        problems.append(f"{len(imgs)} figures, expected {n_figures}")
    for a in imgs:
        src = a.get("src", "")
        if not src.startswith("data:image/png;base64,"):
            problems.append(f"figure not inlined: {src[:40]!r}")
            continue
        try:
            Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True))).load()
        except Exception as e:  # noqa: BLE001
            problems.append(f"figure does not decode: {e}")
    for t, a in p.tags:
        if t in ("script", "link", "iframe", "object", "embed"):
            problems.append(f"<{t}> in a self-contained card")
        for k in ("src", "href"):
            if re.match(r"\s*(https?:)?//", a.get(k) or ""):
                problems.append(f"network reference {a[k]!r}")
    return problems


def test_card_is_self_contained_and_complete(setup):
    page = setup["page"]
    assert setup["out"].read_text() == page
    assert structural_problems(page, 3) == []
    for title in (
        "Dreamed prompts",
        "Top dataset examples",
        "Activation histogram",
        "Optimization trajectory",
        "Activation vs XE frontier",
        "Logit effects",
        "Steering",
    ):
        assert title in page, title
    assert setup["sae"].name in page and "blocks.1.hook_resid_post" in page
    assert f"{setup['result'].ratio:.2f}" in page  # the dream / dataset-max ratio
    assert page.count('class="tok peak"') >= 4  # the activating token of each example is marked


def test_card_escapes_tokens(setup):
    page = setup["page"]
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_structural_check_catches_a_missing_figure(setup):
    page = setup["page"]
    broken = re.sub(r'src="data:image/png;base64,[^"]*"', 'src="figure.png"', page, count=1)
    assert any("not inlined" in p for p in structural_problems(broken, 3))
    truncated = re.sub(r'(src="data:image/png;base64,)([^"]{400})[^"]*"', r'\1\2"', page, count=1)
    assert any("decode" in p for p in structural_problems(truncated, 3))
    assert structural_problems(page.replace("<figure>", "", 1).replace("<img", "<x", 1), 3)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chrome(args: list[str], url: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
            url,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


_PROBE = (
    "<script>window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.images="
    "i.length;document.body.dataset.broken=i.filter(x=>!x.complete||x.naturalWidth===0).length;});</script>"
)


def _rendered_images(path: Path) -> tuple[int, int]:
    """(images, broken images) after Chromium loads ``path`` with a probe script (a test-only copy)."""
    probe = path.with_name(path.stem + "-probe.html")
    probe.write_text(path.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _chrome(["--virtual-time-budget=5000", "--dump-dom"], probe.as_uri()).stdout
    m = re.search(r'<body data-images="(\d+)" data-broken="(\d+)"', dom)
    assert m, f"probe did not run; DOM starts {dom[:200]!r}"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(
    _chromium() is None,
    reason="chromium not installed (apt-get install -y chromium); the structural checks above still ran",
)
def test_card_renders_in_chromium(setup):
    out, root = setup["out"], setup["root"]
    shot = root / "card.png"
    res = _chrome(["--window-size=1200,2400", f"--screenshot={shot}"], out.as_uri())
    assert shot.exists() and shot.stat().st_size > 20_000, res.stderr[-500:]
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400) and len(set(img.resize((120, 240)).getdata())) > 50  # not a blank page
    assert _rendered_images(out) == (3, 0)
    broken = root / "broken.html"  # the check fails on a broken page
    broken.write_text(
        re.sub(r'src="data:image/png;base64,[^"]*"', 'src="figure.png"', out.read_text(), count=1)
    )
    assert _rendered_images(broken) == (3, 1)


def test_card_without_dream_or_statistics(tiny_llama, tiny_tokenizer, setup):
    page = feature_card(
        tiny_llama, tiny_tokenizer, setup["sae"], 5, None, max_new_tokens=4, alphas=(0.0, 3.0)
    )
    assert structural_problems(page, 1) == []  # the histogram only
    assert "ships no dataset statistics" in page and "Dreamed prompts" not in page
    assert "Optimization trajectory" in page and "α = 3" in page


def test_card_rejects_a_dream_for_another_feature(tiny_llama, tiny_tokenizer, setup):
    other = (setup["feature"] + 1) % 128
    with pytest.raises(ValueError, match=f"feature {setup['feature']}, not {other}"):
        feature_card(tiny_llama, tiny_tokenizer, setup["sae"], other, setup["result"])
    with pytest.raises(ValueError, match="latent 999 out of range"):
        feature_card(tiny_llama, tiny_tokenizer, setup["sae"], 999)


def test_render_card_escapes_every_field():
    from featuredream.engine.results import Prompt, Rung
    from featuredream.observe.card import CardData, CardPrompt, DreamSummary
    from featuredream.observe.tracing import Steered, TokenScore
    from featuredream.text.judge import JudgeScore

    d = CardData(
        feature=1,
        sae_name=EVIL,
        site=EVIL,
        model=EVIL,
        d_sae=8,
        dataset_max=1.0,
        fire_rate=0.1,
        fvu=0.1,
        examples=[([EVIL, "\n", "\x07"], 0, [1.0, 0.5, 0.0], 1.0)],
        dreams=[CardPrompt("best", [EVIL, "x"], [0.5, 2.0], 2.0, 3.0)],
        dream_summary=DreamSummary(
            2.0, 2.0, 3.0, EVIL, EVIL, 1, EVIL, True, 1.0, JudgeScore(4.0, 42.0, 2, EVIL), EVIL
        ),
        ladder=[
            Rung(
                EVIL,
                5.0,
                True,
                Prompt(EVIL, [1], 1.5, 4.0, [EVIL], [1.5]),
                JudgeScore(4.0, 42.0, 1, EVIL),
            ),
            Rung("none", None, True, Prompt(EVIL, [1], 2.5, 9.0), None),
        ],
        logits_top=[TokenScore(0, EVIL, 1.0)],
        logits_bottom=[TokenScore(1, EVIL, -1.0)],
        logits_note=EVIL,
        steering=[Steered(1.0, EVIL, [1])],
        steer_prompt=EVIL,
        figures={EVIL: None},
    )
    page = render_card(d)
    assert "<script" not in page.lower() and page.count("&lt;script&gt;") >= 19  # ladder: 4 more; headline
    assert "\x07" not in page and "\\x07" in page
    assert "Fluency ladder" in page and "judge percentile" in page
    assert page.count("<tr>") >= 3 and ">42<" in page  # the rungs and the judge percentile


def test_neuronpedia_export(tiny_llama, tiny_tokenizer, setup):
    out = neuronpedia_json(
        tiny_llama, tiny_tokenizer, setup["sae"], setup["feature"], setup["result"], stats=setup["stats"]
    )
    json.dumps(out)
    assert out["index"] == setup["feature"] and out["hookName"] == "blocks.1.hook_resid_post"
    assert all(len(a["tokens"]) == len(a["values"]) for a in out["activations"])
    assert len(out["activations"]) == 4 + 1 and len(out["pos_str"]) == 10
    assert out["maxActApprox"] == pytest.approx(float(setup["stats"].max_activation[setup["feature"]]))


def test_cli_dream_html_and_card(tmp_path, capsys, tiny_llama, tiny_tokenizer):
    from helpers.saes import identity_sae_dir

    from featuredream.cli.main import main

    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    b = [
        "--model",
        str(tmp_path / "model"),
        "--sae",
        str(identity_sae_dir(tmp_path / "sae")),
        "--feature",
        "3",
    ]
    dream_args = [
        "dream",
        *b,
        "--out",
        str(tmp_path / "r.json"),
        "--no-progress",
        "--min-tokens",
        "3",
        "--max-tokens",
        "10",
        "--n-children",
        "8",
        "--iters",
        "2",
        "--n-start-samples",
        "2",
        "--pareto",
        "0.1,1",
        "--html",
    ]
    assert main(dream_args) == 0, capsys.readouterr().err
    assert structural_problems((tmp_path / "r.html").read_text(), 3) == []
    card = [
        "card",
        *b,
        "--dream",
        str(tmp_path / "r.json"),
        "--out",
        str(tmp_path / "c.html"),
        "--json",
        str(tmp_path / "c.json"),
        "--alphas",
        "0,5",
        "--steer-prompt",
        "Once upon",
    ]
    assert main(card) == 0, capsys.readouterr().err
    page = (tmp_path / "c.html").read_text()
    assert structural_problems(page, 3) == [] and "Once upon" in page and "α = 5" in page
    assert json.loads((tmp_path / "c.json").read_text())["index"] == 3
    capsys.readouterr()
    for args, needle in (
        (
            ["card", *b, "--dream", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x.html")],
            "nope.json",
        ),
        (
            ["card", *b, "--dream", str(tmp_path / "c.html"), "--out", str(tmp_path / "x.html")],
            "not a featuredream result",
        ),
        (["card", *b, "--out", str(tmp_path / "no" / "x.html")], "does not exist"),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.html").exists()


def test_card_with_statistics_but_no_examples(setup, tiny_llama, tiny_tokenizer):
    """Statistics holding only maxima and fire rates (no top examples) give a card without examples."""
    from featuredream.observe.card import card_data
    from featuredream.saes.loading import FeatureStats

    st = setup["stats"]
    bare = FeatureStats({k: st.tensors[k] for k in ("max_activation", "fire_rate")}, {})
    assert bare.examples(setup["feature"]) == []
    d = card_data(tiny_llama, tiny_tokenizer, setup["sae"], setup["feature"], stats=bare, max_new_tokens=3)
    assert d.examples == [] and render_card(d).startswith("<!DOCTYPE html>")
    nj = neuronpedia_json(tiny_llama, tiny_tokenizer, setup["sae"], setup["feature"], None, stats=bare)
    assert nj["activations"] == []


def _summaries(page: str) -> list[str]:
    return re.findall(r"<summary>(.*?)</summary>", page, re.S)


def test_card_collapses_each_example_to_its_minimal_context(setup, tiny_llama, tiny_tokenizer):
    f, st, sae = setup["feature"], setup["stats"], setup["sae"]
    d = card_data(tiny_llama, tiny_tokenizer, sae, f, stats=st, max_new_tokens=3, alphas=(0.0,))
    mins = minimal_context(tiny_llama, tiny_tokenizer, sae, f, [Example(*e) for e in st.examples(f)])
    assert [e.min_len for e in d.examples] == [m.length for m in mins] and d.context_keep == 0.9
    assert [e.index + 1 for e in d.examples] == [m.full for m in mins]
    page = render_card(d)
    assert page.count('<details class="ctx">') == sum(m.start > 0 for m in mins)
    for m in mins:
        assert f"{m.length} / {m.full} tok" in page
    for p in (page, setup["page"]):
        assert "Values are activations in context" in p and "whole corpus window up to it" in p
        assert "\u2265 90% of the value" in p
    tail = card_data(tiny_llama, tiny_tokenizer, sae, f, stats=st, max_new_tokens=3, alphas=(0.0,), keep=None)
    assert all(e.min_len is None for e in tail.examples) and tail.context_keep is None
    assert "the last 12 tokens of the context" in render_card(tail)


def _card(examples) -> CardData:
    return CardData(
        feature=1,
        sae_name="s",
        site="blocks.1.hook_resid_post",
        model="m",
        d_sae=8,
        dataset_max=1.0,
        fire_rate=0.1,
        fvu=0.1,
        examples=examples,
        dreams=[],
        dream_summary=None,
        logits_top=[],
        logits_bottom=[],
        logits_note="n",
        steering=[],
        steer_prompt="p",
        figures={},
        context_keep=0.9,
    )


def test_collapsed_context_is_escaped_and_split_at_the_minimal_context():
    toks = ["EARLY", EVIL, "mid", EVIL, "peak", "after"]
    page = render_card(_card([CardExample(toks, 4, [0.1, 0.2, 0.3, 0.4, 1.0, 0.0], 1.0, min_len=3)]))
    shown = '">&lt;script&gt;'  # a token's text (its tooltip holds it too)
    assert "<script" not in page.lower() and page.count(shown) == 3  # in the summary once, the whole twice
    (summary,) = _summaries(page)  # the visible part: the minimal context (mid <script> peak) and after
    assert "EARLY" not in summary and ">mid<" in summary and "after" in summary
    assert summary.count(shown) == 1 and summary.count('class="tok peak"') == 1
    whole = page.split('<div class="whole">', 1)[1].split("</details>", 1)[0]
    assert whole.index("EARLY") < whole.index('class="cut"') < whole.index(">mid<") < whole.index("after")
    assert "3 / 5 tok" in page


def test_context_without_minimal_length_shows_the_last_tokens():
    toks = [f"t{i:02d}" for i in range(20)]
    long = CardExample(toks, 17, [0.0] * 20, 1.0)  # min_len None: no model computed it
    short = (["a", "b", "c"], 1, [0.0, 1.0, 0.0], 1.0)  # a plain tuple, as CardData used to hold
    page = render_card(_card([long, short]))
    (summary,) = _summaries(page)
    assert "t05" not in summary and all(f"t{i:02d}" in summary for i in range(6, 20))
    assert "12 / 18 tok" in page and "2 / 2 tok" in page and page.count("<details") == 1


def test_card_colours_scale_to_scores_not_to_an_attention_sink():
    """A first-token spike (300, an attention sink) must not wash out the scored token (10 = the dream's
    score and the dataset max): the scored token is drawn at full colour."""
    from featuredream.observe.card import CardData, CardPrompt, DreamSummary

    d = CardData(
        feature=1, sae_name="s", site="x", model="m", d_sae=8, dataset_max=10.0, fire_rate=0.1, fvu=0.1,
        examples=[(["a", "b"], 1, [300.0, 10.0], 10.0)],
        dreams=[CardPrompt("best", ["sink", "mid", "peak"], [300.0, 5.0, 10.0], 10.0, 3.0)],
        dream_summary=DreamSummary(1.0, 10.0, 3.0, "dataset", "o", 1, "iterations", True, 1.0, None, "readable"),
        logits_top=[], logits_bottom=[], logits_note="", steering=[], steer_prompt="", figures={},
    )  # fmt: skip
    page = render_card(d)
    dream_row = page[page.index(">peak<") - 200 : page.index(">peak<")]
    assert "rgba(" in dream_row and ",1.00)" in dream_row.split("rgba(")[-1]
    mid = page[page.index(">mid<") - 200 : page.index(">mid<")]
    assert ",0.50)" in mid.split("rgba(")[-1]
