"""Two CPU processes (gloo, DDP) each with half a batch == one process on the full batch.

The workers are this file run as a script with torchrun's environment variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so `init_distributed` is exercised as well.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from clippo.train.distributed import (
    DistInfo,
    all_gather_with_grad,
    all_reduce_mean,
    init_distributed,
    is_main,
)

WORLD = 2
BATCH = 8
# (name, kind, gather, local_loss)
MODES = [
    ("softmax_full", "softmax", True, False),
    ("softmax_local", "softmax", True, True),
    ("sigmoid_full", "sigmoid", True, False),
    ("sigmoid_local", "sigmoid", True, True),
    ("softmax_nogather", "softmax", False, False),
]


class _Tiny(nn.Module):
    """A shared linear "encoder" (one tower, as CLIPPO), a log-scale t, and the loss module
    (owning the sigmoid bias), all inside the module that DDP wraps."""

    def __init__(self, kind: str, gather: bool, local_loss: bool) -> None:
        super().__init__()
        from clippo.train.loss import ContrastiveLoss

        torch.manual_seed(0)
        self.enc = nn.Linear(6, 4)
        self.t = nn.Parameter(torch.tensor([1.5]))
        self.loss = ContrastiveLoss(
            kind, gather, local_loss, learn_bias=kind == "sigmoid", bias_init=-2.0
        )

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> torch.Tensor:
        zimg = nn.functional.normalize(self.enc(x_img), dim=-1)
        ztxt = nn.functional.normalize(self.enc(x_txt + 0.3), dim=-1)
        return self.loss(zimg, ztxt, self.t.exp())


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 6, generator=g)


def _worker(out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from clippo.train.distributed import cleanup, get_rank

    info = init_distributed(device="cpu")
    assert info.world_size == WORLD and info.device.type == "cpu"
    x_img, x_txt = _batch()
    b = BATCH // info.world_size
    sl = slice(info.rank * b, (info.rank + 1) * b)
    result: dict[str, object] = {"rank": get_rank(), "is_main": is_main()}
    # all_gather_with_grad: forward concatenates in rank order, backward sums every rank's grads.
    x = torch.full((2, 3), float(info.rank), requires_grad=True)
    y = all_gather_with_grad(x)
    (y * torch.arange(y.shape[0]).float()[:, None]).sum().backward()
    result["gather/value"], result["gather/grad"] = y.detach(), x.grad
    for name, kind, gather, local in MODES:
        model = DDP(_Tiny(kind, gather, local))
        loss = model(x_img[sl], x_txt[sl])
        loss.backward()  # DDP averages the gradients over ranks here
        result[f"{name}/loss"] = loss.item()
        result[f"{name}/loss_mean"] = all_reduce_mean(loss).item()
        for pname, p in model.module.named_parameters():
            result[f"{name}/grad/{pname}"] = p.grad.clone()
    torch.save(result, os.path.join(out_dir, f"rank{info.rank}.pt"))
    cleanup()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(WORLD),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed workers timed out")
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _reference(kind: str) -> tuple[float, dict[str, torch.Tensor]]:
    """One process, full batch, no process group."""
    model = _Tiny(kind, True, False)
    loss = model(*_batch())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.slow  # the module fixture runs torchrun with two ranks
def test_all_gather_with_grad(worker_results):
    b = 2
    for rank, res in enumerate(worker_results):
        assert res["rank"] == rank and res["is_main"] == (rank == 0)
        expected = torch.cat([torch.full((b, 3), float(r)) for r in range(WORLD)])
        torch.testing.assert_close(res["gather/value"], expected)
        # d/dx_rank of sum_k sum_i i * y_i over all ranks' losses = WORLD * row index of rank's slice
        rows = torch.arange(rank * b, (rank + 1) * b).float()[:, None].expand(b, 3)
        torch.testing.assert_close(res["gather/grad"], WORLD * rows)


@pytest.mark.slow
@pytest.mark.parametrize("name,kind", [(m[0], m[1]) for m in MODES if m[2]])
def test_two_ranks_match_single_process(worker_results, name, kind):
    ref_loss, ref_grads = _reference(kind)
    for res in worker_results:
        if name.endswith("_full"):
            assert res[f"{name}/loss"] == pytest.approx(ref_loss, rel=1e-6)
        else:
            assert res[f"{name}/loss"] != pytest.approx(ref_loss, rel=1e-3)  # a rank's share only
        assert res[f"{name}/loss_mean"] == pytest.approx(ref_loss, rel=1e-6)
        assert set(k.split("/grad/")[1] for k in res if k.startswith(f"{name}/grad/")) == set(
            ref_grads
        )
        for pname, g in ref_grads.items():
            torch.testing.assert_close(
                res[f"{name}/grad/{pname}"], g, rtol=1e-5, atol=1e-7, msg=f"{name}: {pname}"
            )


@pytest.mark.slow
def test_without_gather_gradients_differ(worker_results):
    """Sanity: local negatives only give a different gradient, so the tests above can fail."""
    _, ref_grads = _reference("softmax")
    diff = (
        (worker_results[0]["softmax_nogather/grad/enc.weight"] - ref_grads["enc.weight"])
        .abs()
        .max()
    )
    assert diff > 1e-4


def test_init_distributed_single_process_without_torchrun():
    info = init_distributed(device="cpu", env={})
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert info.is_main and not info.is_distributed and is_main()
    x = torch.ones(2, requires_grad=True)
    assert all_gather_with_grad(x) is x


def test_init_distributed_incomplete_env_names_variable():
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        init_distributed(device="cpu", env={"RANK": "0"})
    with pytest.raises(RuntimeError, match="RANK=.x"):
        init_distributed(device="cpu", env={"RANK": "x", "WORLD_SIZE": "2"})


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    torch.set_num_threads(1)
    _worker(sys.argv[2])
