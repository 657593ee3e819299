import torch
import torch.nn.functional as F

from featuredream.fluency import sequence_xe


def test_masked_xe_equals_unpadded_xe(tiny_llama):
    torch.manual_seed(0)
    seqs = [torch.randint(1, 300, (n,)) for n in (3, 7, 5)]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    logits = tiny_llama(ids, attention_mask=mask.long()).logits
    batched = sequence_xe(logits, ids, mask)
    for i, s in enumerate(seqs):
        lg = tiny_llama(s[None]).logits[0]
        ref = F.cross_entropy(lg[:-1], s[1:])
        torch.testing.assert_close(batched[i], ref, atol=1e-5, rtol=1e-5)


def test_left_padding_same_as_right(tiny_llama):
    s = torch.randint(1, 300, (5,))
    right = torch.cat([s, torch.zeros(2, dtype=torch.long)])[None]
    left = torch.cat([torch.zeros(2, dtype=torch.long), s])[None]
    rm = (torch.arange(7) < 5)[None]
    lm = (torch.arange(7) >= 2)[None]
    # Logits at real positions are what matter; feed the same per-position logits for both layouts
    lg = tiny_llama(s[None]).logits
    pad = torch.zeros(1, 2, lg.shape[-1])
    xr = sequence_xe(torch.cat([lg, pad], 1), right, rm)
    xl = sequence_xe(torch.cat([pad, lg], 1), left, lm)
    torch.testing.assert_close(xr, xl)


def test_one_token_sequence_is_zero():
    logits = torch.randn(1, 1, 10)
    assert sequence_xe(logits, torch.tensor([[3]]), torch.ones(1, 1, dtype=torch.bool)).item() == 0.0
