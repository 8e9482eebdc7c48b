"""Contrastive losses vs hand-computed values and naive loop references (single process)."""

from __future__ import annotations

import math

import pytest
import torch

from clippo.train.loss import (
    SIGLIP_BIAS_INIT,
    ContrastiveLoss,
    sigmoid_contrastive_loss,
    sigmoid_contrastive_loss_local,
    softmax_contrastive_loss,
    softmax_contrastive_loss_local,
)


def _naive_softmax(zimg, ztxt, scale):
    """Loops over pairs; differentiable through torch scalars."""
    n = zimg.shape[0]
    logit = [
        [scale * sum(zimg[i, d] * ztxt[j, d] for d in range(zimg.shape[1])) for j in range(n)]
        for i in range(n)
    ]
    total = 0.0
    for i in range(n):
        row = -logit[i][i] + torch.log(sum(torch.exp(logit[i][j]) for j in range(n)))
        col = -logit[i][i] + torch.log(sum(torch.exp(logit[j][i]) for j in range(n)))
        total = total + 0.5 * (row + col)
    return total / n


def _naive_sigmoid(zimg, ztxt, scale, bias):
    n = zimg.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            logit = scale * sum(zimg[i, d] * ztxt[j, d] for d in range(zimg.shape[1])) + bias
            label = 1.0 if i == j else -1.0
            total = total + torch.log1p(torch.exp(-label * logit))
    return total / n


def test_softmax_2x2_identity_hand_value():
    z = torch.eye(2)
    # logits = I: each row/column is CE([1, 0], 0) = log(1 + e^-1)
    assert softmax_contrastive_loss(z, z, 1.0).item() == pytest.approx(
        math.log(1 + math.exp(-1)), abs=1e-6
    )


def test_softmax_2x2_asymmetric_hand_value():
    zimg = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    ztxt = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # logits = 2 * [[0.8, 0], [0.96, 0.8]] = [[1.6, 0], [1.92, 1.6]]
    # rows: log(1+e^-1.6), log(1+e^0.32); columns: log(1+e^0.32), log(1+e^-1.6)
    expected = 0.5 * (math.log(1 + math.exp(-1.6)) + math.log(1 + math.exp(0.32)))
    got = softmax_contrastive_loss(zimg, ztxt, torch.tensor([2.0]))
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_sigmoid_2x2_hand_value():
    zimg = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    ztxt = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # logits = [[1.6, 0], [1.92, 1.6]] - 1 = [[0.6, -1], [0.92, 0.6]]
    # diagonal: -log sig(0.6) = log(1+e^-0.6); off-diagonal x: -log sig(-x) = log(1+e^x)
    expected = (
        2 * math.log(1 + math.exp(-0.6)) + math.log(1 + math.exp(-1)) + math.log(1 + math.exp(0.92))
    ) / 2
    got = sigmoid_contrastive_loss(zimg, ztxt, 2.0, torch.tensor([-1.0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def _unit(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, d, generator=g, dtype=torch.float64)
    return z / z.norm(dim=1, keepdim=True)


def test_softmax_matches_naive_loop_values_and_gradients():
    zimg = _unit(5, 3, 0).requires_grad_()
    ztxt = _unit(5, 3, 1).requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    ref = _naive_softmax(zimg, ztxt, scale)
    ref_grads = torch.autograd.grad(ref, (zimg, ztxt, scale))
    got = softmax_contrastive_loss(zimg, ztxt, scale)
    got_grads = torch.autograd.grad(got, (zimg, ztxt, scale))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_sigmoid_matches_naive_loop_values_and_gradients():
    zimg = _unit(4, 3, 2).requires_grad_()
    ztxt = _unit(4, 3, 3).requires_grad_()
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    ref = _naive_sigmoid(zimg, ztxt, scale, bias)
    ref_grads = torch.autograd.grad(ref, (zimg, ztxt, scale, bias))
    got = sigmoid_contrastive_loss(zimg, ztxt, scale, bias)
    got_grads = torch.autograd.grad(got, (zimg, ztxt, scale, bias))
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_local_shards_sum_to_full_loss_and_gradients(kind):
    """Sharded rows (what each rank computes in local-loss mode) weighted by b/B = full loss."""
    B, D, shards = 6, 4, 3
    zimg = _unit(B, D, 4).float().requires_grad_()
    ztxt = _unit(B, D, 5).float().requires_grad_()
    scale, bias = torch.tensor(4.0), torch.tensor(-1.5)
    if kind == "softmax":
        full = softmax_contrastive_loss(zimg, ztxt, scale)
    else:
        full = sigmoid_contrastive_loss(zimg, ztxt, scale, bias)
    g_full = torch.autograd.grad(full, (zimg, ztxt))
    b = B // shards
    parts = []
    for r in range(shards):
        sl = slice(r * b, (r + 1) * b)
        if kind == "softmax":
            parts.append(
                softmax_contrastive_loss_local(zimg[sl], ztxt[sl], zimg, ztxt, scale, r * b)
            )
        else:
            parts.append(sigmoid_contrastive_loss_local(zimg[sl], ztxt, scale, bias, r * b))
    total = sum(parts) * (b / B)
    g_local = torch.autograd.grad(total, (zimg, ztxt))
    assert total.item() == pytest.approx(full.item(), rel=1e-6)
    for a, c in zip(g_local, g_full):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
    # A shard's value differs from the full loss: the test above is not trivially true.
    assert abs(parts[0].item() - full.item()) > 1e-4


def test_module_single_process_equals_pure_functions():
    zimg, ztxt = _unit(4, 3, 6).float(), _unit(4, 3, 7).float()
    for local in (False, True):
        soft = ContrastiveLoss("softmax", gather=True, local_loss=local)(zimg, ztxt, 3.0)
        assert soft.item() == pytest.approx(
            softmax_contrastive_loss(zimg, ztxt, 3.0).item(), rel=1e-7
        )
    sig = ContrastiveLoss("sigmoid")(zimg, ztxt, 3.0, -1.0)
    assert sig.item() == pytest.approx(
        sigmoid_contrastive_loss(zimg, ztxt, 3.0, -1.0).item(), rel=1e-7
    )


def test_module_owned_bias_is_learned():
    loss_fn = ContrastiveLoss("sigmoid", learn_bias=True, bias_init=-10.0)
    assert [n for n, _ in loss_fn.named_parameters()] == ["logit_bias"]
    assert loss_fn.logit_bias.item() == -10.0
    zimg, ztxt = _unit(3, 2, 8).float(), _unit(3, 2, 9).float()
    loss_fn(zimg, ztxt, 10.0).backward()
    # d/db of sum_ij log(1+exp(-y*(s+b)))/B at b=-10: dominated by the 3 positives pulling b up.
    assert loss_fn.logit_bias.grad is not None and loss_fn.logit_bias.grad.item() < 0


def test_module_owned_bias_can_be_used_without_its_gradient():
    """Gradient accumulation evaluates the whole loss once per micro-batch; only one of those
    calls may pass the bias its gradient."""
    loss_fn = ContrastiveLoss("sigmoid", learn_bias=True)
    assert loss_fn.logit_bias.item() == SIGLIP_BIAS_INIT
    zimg, ztxt = _unit(3, 2, 8).float().requires_grad_(), _unit(3, 2, 9).float()
    frozen = loss_fn(zimg, ztxt, 10.0, detach_own=True)
    frozen.backward()
    assert zimg.grad is not None and loss_fn.logit_bias.grad is None
    assert frozen.item() == loss_fn(zimg, ztxt, 10.0).item()


def test_module_bad_arguments():
    z = torch.eye(2)
    with pytest.raises(ValueError, match="kind"):
        ContrastiveLoss("clip")
    with pytest.raises(ValueError, match="gather"):
        ContrastiveLoss("softmax", gather=False, local_loss=True)
    with pytest.raises(ValueError, match="logit_bias"):
        ContrastiveLoss("sigmoid")(z, z, 1.0)
    with pytest.raises(ValueError, match="logit_bias"):
        ContrastiveLoss("softmax")(z, z, 1.0, 0.5)
    with pytest.raises(ValueError, match="zimg"):
        softmax_contrastive_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


def test_loss_runs_in_float32_under_bf16_autocast():
    zimg, ztxt = _unit(8, 16, 10).float(), _unit(8, 16, 11).float()
    ref = softmax_contrastive_loss(zimg, ztxt, 10.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = softmax_contrastive_loss(zimg, ztxt, 10.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_bf16_and_fp16_inputs_are_computed_in_float32_and_float64_stays_float64():
    zimg, ztxt = _unit(6, 8, 12), _unit(6, 8, 13)  # float64
    exact = softmax_contrastive_loss(zimg, ztxt, 10.0)
    assert exact.dtype == torch.float64
    assert sigmoid_contrastive_loss(zimg, ztxt, 10.0, -1.0).dtype == torch.float64
    for low in (torch.bfloat16, torch.float16):
        got = softmax_contrastive_loss(zimg.to(low), ztxt.to(low), torch.tensor(10.0, dtype=low))
        assert got.dtype == torch.float32
        # float32 maths on the rounded inputs: the rounding of the inputs is the only error
        ref = softmax_contrastive_loss(zimg.to(low).double(), ztxt.to(low).double(), 10.0)
        assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.float16):
        got = sigmoid_contrastive_loss(zimg.float(), ztxt.float(), 10.0, -1.0)
    assert got.dtype == torch.float32


def _gradcheck_inputs(b: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Non-unit float64 embeddings (so every direction of the gradient is tested), a logit scale
    and a bias, all requiring gradients."""
    g = torch.Generator().manual_seed(seed)
    zimg = torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_()
    ztxt = torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_()
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    return zimg, ztxt, scale, bias


def test_gradcheck_softmax_and_its_local_rows():
    zimg, ztxt, scale, _ = _gradcheck_inputs(4, 3, 20)
    assert torch.autograd.gradcheck(softmax_contrastive_loss, (zimg, ztxt, scale))
    for offset in (0, 2):

        def local(zi, zt, zi_all, zt_all, s, offset=offset):
            return softmax_contrastive_loss_local(zi, zt, zi_all, zt_all, s, offset)

        shard = slice(offset, offset + 2)
        args = (zimg[shard].detach().clone().requires_grad_(), ztxt[shard].detach().clone())
        assert torch.autograd.gradcheck(local, (*args, zimg, ztxt, scale))


def test_gradcheck_sigmoid_and_its_local_rows():
    zimg, ztxt, scale, bias = _gradcheck_inputs(4, 3, 21)
    assert torch.autograd.gradcheck(sigmoid_contrastive_loss, (zimg, ztxt, scale, bias))

    def local(zi, zt_all, s, b):
        return sigmoid_contrastive_loss_local(zi, zt_all, s, b, 1)

    assert torch.autograd.gradcheck(local, (zimg[1:3].detach().requires_grad_(), ztxt, scale, bias))


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_gradcheck_the_module_with_its_learned_bias(kind):
    """Through `ContrastiveLoss` (float64 after `.double()`), its own bias checked as an input."""
    loss_fn = ContrastiveLoss(kind, learn_bias=kind == "sigmoid").double()
    zimg, ztxt, scale, _ = _gradcheck_inputs(3, 4, 22)
    names = [n for n, _ in loss_fn.named_parameters()]
    own = [p.detach().clone().requires_grad_() for p in loss_fn.parameters()]
    assert names == (["logit_bias"] if kind == "sigmoid" else [])
    assert all(p.dtype == torch.float64 for p in own)

    def f(zi, zt, s, *params):
        return torch.func.functional_call(loss_fn, dict(zip(names, params)), (zi, zt, s))

    assert f(zimg, ztxt, scale, *own).dtype == torch.float64
    assert torch.autograd.gradcheck(f, (zimg, ztxt, scale, *own))
