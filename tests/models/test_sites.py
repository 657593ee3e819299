import pytest
import torch

from featuredream.models.sites import Site, capture, kv_head, parse_hook_name, run_sites


@pytest.mark.parametrize(
    "name,site",
    [
        ("blocks.12.hook_resid_post", Site("resid_post", 12)),
        ("blocks.0.hook_resid_pre", Site("resid_pre", 0)),
        ("blocks.3.hook_mlp_out", Site("mlp_out", 3)),
        ("blocks.1.attn.hook_q", Site("attn_q", 1)),
        ("blocks.3.attn.hook_z", Site("attn_z", 3)),
        ("model.layers.12", Site("resid_post", 12)),
        ("model.layers.2.mlp", Site("mlp_out", 2)),
        ("model.layers.2.self_attn.q_proj", Site("attn_q", 2)),
        ("attn_q:9:3", Site("attn_q", 9, 3)),
    ],
)
def test_parse_hook_name(name, site):
    assert parse_hook_name(name) == site


def test_parse_hook_name_head_and_roundtrip():
    s = parse_hook_name("blocks.1.attn.hook_q", head=2)
    assert s == Site("attn_q", 1, 2)
    assert parse_hook_name(Site("resid_post", 4).hook_name) == Site("resid_post", 4)


@pytest.mark.parametrize("bad", ["blocks.x.hook_resid_post", "blocks.1.hook_resid_mid", "nonsense", ""])
def test_parse_hook_name_rejects(bad):
    with pytest.raises(ValueError, match="cannot parse hook name"):
        parse_hook_name(bad)


def test_site_validation(tiny_llama):
    with pytest.raises(ValueError, match="valid layers are 0..2"):
        Site("resid_post", 3).validate(tiny_llama)
    with pytest.raises(ValueError, match="valid heads are 0..3"):
        Site("attn_q", 1, 4).validate(tiny_llama)
    with pytest.raises(ValueError, match="unknown site kind"):
        Site("resid_mid", 1)


def test_resid_sites_equal_hidden_states(tiny_model):
    ids = torch.randint(1, 300, (2, 7))
    hs = tiny_model(ids, output_hidden_states=True).hidden_states
    sites = [Site("resid_pre", 1), Site("resid_post", 1), Site("resid_pre", 0)]
    acts, _ = run_sites(tiny_model, sites, input_ids=ids)
    # resid_post of layer L is hidden_states[L+1]; resid_pre its input hidden_states[L]
    torch.testing.assert_close(acts[Site("resid_post", 1)], hs[2])
    torch.testing.assert_close(acts[Site("resid_pre", 1)], hs[1])
    torch.testing.assert_close(acts[Site("resid_pre", 0)], hs[0])
    assert not torch.allclose(acts[Site("resid_pre", 1)], acts[Site("resid_post", 1)])


def test_early_exit_skips_later_layers(tiny_llama):
    calls = []
    layers = tiny_llama.model.layers
    hooks = [
        layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(layers)
    ]
    try:
        run_sites(tiny_llama, [Site("resid_post", 0)], input_ids=torch.randint(1, 300, (1, 5)))
        assert calls == [0]
        calls.clear()
        run_sites(tiny_llama, [Site("resid_post", 0)], input_ids=torch.randint(1, 300, (1, 5)), logits=True)
        assert calls == [0, 1, 2]
    finally:
        for h in hooks:
            h.remove()


def test_hooks_removed_even_on_error(tiny_llama):
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_llama.modules())
    with pytest.raises(RuntimeError):
        with capture(tiny_llama, [Site("resid_post", 1)]):
            raise RuntimeError("boom")
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_llama.modules())
    assert before == after


def _layer_input_q(model, ids, layer):
    hs = model(ids, output_hidden_states=True).hidden_states[layer]
    blk = model.model.layers[layer]
    x = blk.input_layernorm(hs)
    q = blk.self_attn.q_proj(x)
    return x, q.view(*q.shape[:-1], -1, 16)


def test_query_site_equals_hand_computation(tiny_model):
    ids = torch.randint(1, 300, (2, 6))
    x, q = _layer_input_q(tiny_model, ids, 1)
    acts, _ = run_sites(tiny_model, [Site("attn_q", 1), Site("attn_q", 1, 2)], input_ids=ids)
    torch.testing.assert_close(acts[Site("attn_q", 1)], q.flatten(-2))  # whole layer: [b, s, H * d_head]
    torch.testing.assert_close(acts[Site("attn_q", 1, 2)], q[:, :, 2])


def test_gqa_key_head_mapping(tiny_llama):
    ids = torch.randint(1, 300, (1, 6))
    blk = tiny_llama.model.layers[1]
    hs = tiny_llama(ids, output_hidden_states=True).hidden_states[1]
    k = blk.self_attn.k_proj(blk.input_layernorm(hs)).view(1, 6, 2, 16)
    assert [kv_head(tiny_llama, h) for h in range(4)] == [0, 0, 1, 1]
    acts, _ = run_sites(tiny_llama, [Site("attn_k", 1, 3)], input_ids=ids)
    torch.testing.assert_close(acts[Site("attn_k", 1, 3)], k[:, :, 1])


def test_rotary_query_differs_but_keeps_norm(tiny_llama):
    ids = torch.randint(1, 300, (1, 6))
    acts, _ = run_sites(tiny_llama, [Site("attn_q", 1), Site("attn_q_rot", 1)], input_ids=ids)
    q, qr = acts[Site("attn_q", 1)], acts[Site("attn_q_rot", 1)]
    torch.testing.assert_close(q[:, 0], qr[:, 0])  # position 0: rotation by angle 0
    assert not torch.allclose(q[:, 1:], qr[:, 1:])
    torch.testing.assert_close(q.norm(dim=-1), qr.norm(dim=-1))  # rotation preserves norm


def test_rotary_query_equals_hand_computation(tiny_model):
    """Post-rotary query = q * cos + rotate_half(q) * sin, with the angles computed by hand from rope_theta."""
    ids = torch.randint(1, 300, (2, 7))
    _, q = _layer_input_q(tiny_model, ids, 2)  # [b, s, H, d_head], pre-rotary
    d = q.shape[-1]
    theta = tiny_model.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.arange(ids.shape[1]).float()[:, None] * inv_freq[None]  # [s, d/2]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    half = torch.cat([-q[..., d // 2 :], q[..., : d // 2]], -1)
    expect = q * cos[None, :, None] + half * sin[None, :, None]
    acts, _ = run_sites(tiny_model, [Site("attn_q_rot", 2, 3), Site("attn_q_rot", 2)], input_ids=ids)
    torch.testing.assert_close(acts[Site("attn_q_rot", 2, 3)], expect[:, :, 3], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(acts[Site("attn_q_rot", 2)], expect.flatten(-2), atol=1e-5, rtol=1e-4)


def test_value_and_z_heads(tiny_llama):
    """v of query head h is its key/value group's value; z of head h is o_proj's input slice for h."""
    ids = torch.randint(1, 300, (1, 5))
    blk = tiny_llama.model.layers[0]
    hs = tiny_llama(ids, output_hidden_states=True).hidden_states[0]
    v = blk.self_attn.v_proj(blk.input_layernorm(hs)).view(1, 5, 2, 16)
    z_in = {}
    h = blk.self_attn.o_proj.register_forward_pre_hook(lambda m, a: z_in.setdefault("z", a[0]))
    try:
        tiny_llama(ids)
    finally:
        h.remove()
    acts, _ = run_sites(
        tiny_llama, [Site("attn_v", 0, 1), Site("attn_v", 0, 2), Site("attn_z", 0, 3)], input_ids=ids
    )
    torch.testing.assert_close(acts[Site("attn_v", 0, 1)], v[:, :, 0])
    torch.testing.assert_close(acts[Site("attn_v", 0, 2)], v[:, :, 1])
    torch.testing.assert_close(acts[Site("attn_z", 0, 3)], z_in["z"].view(1, 5, 4, 16)[:, :, 3])


def test_key_vector_is_the_groups_key(tiny_llama, tiny_tokenizer):
    from featuredream.models.sites import key_vector

    text = "The capital of France"
    ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
    acts, _ = run_sites(tiny_llama, [Site("attn_k", 1, 2)], input_ids=ids)
    torch.testing.assert_close(
        key_vector(tiny_llama, tiny_tokenizer, 1, 3, text), acts[Site("attn_k", 1, 2)][0, -1]
    )
    with pytest.raises(ValueError, match="head index 4 out of range: valid heads are 0..3"):
        key_vector(tiny_llama, tiny_tokenizer, 1, 4, text)


@pytest.mark.parametrize("arch", ["qwen3", "olmo2"])
def test_rotary_query_applies_the_query_norm(arch):
    """Models with a query norm (per head in Qwen3, over the whole projection in OLMo-2): attn_q_rot is
    norm -> rotary, i.e. what the attention scores use; attn_q stays the raw projection (TL hook_q)."""
    from transformers import AutoModelForCausalLM, Olmo2Config, Qwen3Config

    torch.manual_seed(0)
    kw = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    cfg = Qwen3Config(**kw, head_dim=16) if arch == "qwen3" else Olmo2Config(**kw)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains, so a missing norm would show
        model.model.layers[1].self_attn.q_norm.weight.uniform_(0.5, 2.0)
    ids = torch.randint(1, 300, (1, 6))
    blk = model.model.layers[1]
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states[1]
        raw = blk.self_attn.q_proj(blk.input_layernorm(hs) if hasattr(blk, "input_layernorm") else hs)
        if arch == "qwen3":
            q = blk.self_attn.q_norm(raw.view(1, 6, 4, 16))
        else:
            q = blk.self_attn.q_norm(raw).view(1, 6, 4, 16)
        ang = torch.arange(6).float()[:, None] * (
            1.0 / cfg.rope_parameters["rope_theta"] ** (torch.arange(0, 16, 2).float() / 16)
        )
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        expect = q * cos[None, :, None] + torch.cat([-q[..., 8:], q[..., :8]], -1) * sin[None, :, None]
        acts, _ = run_sites(model, [Site("attn_q_rot", 1, 2), Site("attn_q", 1, 2)], input_ids=ids)
    torch.testing.assert_close(acts[Site("attn_q_rot", 1, 2)], expect[:, :, 2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(acts[Site("attn_q", 1, 2)], raw.view(1, 6, 4, 16)[:, :, 2])
