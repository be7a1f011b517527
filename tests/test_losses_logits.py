"""Output-level losses against naive reference loops, and their properties."""

from __future__ import annotations

import math

import pytest
import torch

from lmdistill.losses.logits import cross_entropy, soft_target_kl, squared_error
from lmdistill.losses.reduce import masked_mean


def naive_kl(s: list[float], t: list[float], temp: float) -> float:
    zs = [math.exp(x / temp) for x in s]
    zt = [math.exp(x / temp) for x in t]
    q = [z / sum(zs) for z in zs]
    p = [z / sum(zt) for z in zt]
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


@pytest.mark.parametrize("temp", [1.0, 2.0, 10.0])
def test_soft_target_kl_matches_naive_and_scales_by_t2(temp):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g) * 3, torch.randn(5, 4, generator=g) * 3
    got = soft_target_kl(s, t, temp)
    want = torch.tensor([naive_kl(s[i].tolist(), t[i].tolist(), temp) * temp**2 for i in range(5)])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_soft_target_kl_properties():
    x = torch.randn(6, 3)
    assert torch.allclose(soft_target_kl(x, x, 2.0), torch.zeros(6), atol=1e-6)
    y = torch.randn(6, 3)
    assert (soft_target_kl(x, y, 3.0) >= 0).all()
    # bf16 inputs give (nearly) the fp32 result: the math runs in float32
    torch.testing.assert_close(
        soft_target_kl(x.bfloat16(), y.bfloat16(), 2.0),
        soft_target_kl(x.bfloat16().float(), y.bfloat16().float(), 2.0),
    )


def test_cross_entropy_matches_naive_and_ignores():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, -100, 1])
    got = cross_entropy(logits, labels)
    for i, y in enumerate(labels.tolist()):
        want = 0.0 if y == -100 else -(logits[i, y] - torch.logsumexp(logits[i], 0)).item()
        assert got[i].item() == pytest.approx(want, abs=1e-6)


def test_squared_error():
    assert squared_error(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).tolist() == [1.0, 4.0]
    assert squared_error(torch.ones(2, 4), torch.zeros(2, 4)).tolist() == [1.0, 1.0]


def test_masked_mean_ignores_padding_and_is_zero_when_all_masked():
    v = torch.tensor([[1.0, 2.0, 1e9], [3.0, float("nan"), 5.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(v, m).item() == pytest.approx(11 / 4)
    x = torch.randn(3, requires_grad=True)
    z = masked_mean(x, torch.zeros(3, dtype=torch.bool))
    assert z.item() == 0.0 and not torch.isnan(z)
    z.backward()
    assert x.grad is not None and (x.grad == 0).all()
    assert masked_mean(torch.tensor([2.0, 4.0])).item() == 3.0
