"""What a run reports and bounds beside its training loss: the validation loss on held-out batches
(against the loss computed by hand), the CLIP clamp of the logit scale, Weights & Biases logging
in offline mode (read back from the files wandb wrote)."""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import clippo
from clippo.train import build_model, train
from clippo.train.config import (
    CheckpointConfig,
    LoggingConfig,
    LoopConfig,
    ModelSection,
    SourceConfig,
    TrainConfig,
    ValidationConfig,
    WandbConfig,
)
from clippo.train.data import TrainData, batch_pixels
from clippo.train.log import read_metrics
from clippo.train.state import LOSS_FILE, checkpoint_dir

HELDOUT = SourceConfig(kind="synthetic", options={"textured": False, "split": "heldout"})
HELDOUT_TEXT = SourceConfig(kind="synthetic_paraphrase", options={"length": 1000})


# ---- validation loss ---------------------------------------------------------------------------


def hand_loss(
    kind: str, zimg: torch.Tensor, ztxt: torch.Tensor, scale: float, bias: float
) -> float:
    """The contrastive loss written out in float64: softmax CE both ways, or SigLIP's sum."""
    logits = scale * zimg.double() @ ztxt.double().T
    n = logits.shape[0]
    if kind == "softmax":
        target = torch.arange(n)
        return float(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
    labels = 2 * torch.eye(n, dtype=torch.float64) - 1
    return float(torch.log1p(torch.exp(-labels * (logits + bias))).sum() / n)


@pytest.mark.parametrize(("kind", "accum"), [("softmax", 1), ("sigmoid", 2)])
def test_validation_loss_equals_the_loss_computed_by_hand(tmp_path, kind, accum, tiny_config):
    val = ValidationConfig(
        every=2,
        batches=2,
        image_text=(HELDOUT,),
        text_pairs=(HELDOUT_TEXT,),
        text_pair_fraction=0.25,
    )
    loop = LoopConfig(
        steps=4, batch_size=8, accum_steps=accum, precision="fp32", device="cpu", loss=kind
    )
    cfg = tiny_config(tmp_path, loop=loop, validation=val)
    cfg = cfg.replace(checkpoint=CheckpointConfig(every_steps=2, keep_last=5))

    seen = set()  # (training mode, grad enabled) of every forward through the model
    model = build_model(cfg.model)
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.add((m.training, torch.is_grad_enabled())), with_kwargs=True
    )
    result = train(cfg, model=model)
    # validation: eval mode, no gradients (training: train mode; accumulation's first pass
    # embeds without gradients)
    assert {(False, False), (True, True)} <= seen <= {(False, False), (True, True), (True, False)}
    logged = {
        r["step"]: r["val/loss"]
        for r in read_metrics(tmp_path / "metrics.jsonl")
        if "val/loss" in r
    }
    assert sorted(logged) == [2, 4]

    # the held-out batches, built as the trainer builds them, through each checkpoint's model
    data = TrainData(val.data_config(cfg.data), result.model.renderer, 8, seed=cfg.loop.seed)
    batches = data(0)
    pixels = [
        batch_pixels(next(batches), torch.device("cpu"), result.model.renderer) for _ in range(2)
    ]
    assert not torch.equal(pixels[0][0], pixels[1][0])
    for step in (2, 4):
        ckpt = checkpoint_dir(tmp_path, step)
        trained = clippo.load(ckpt).eval()
        bias = float(load_file(str(ckpt / LOSS_FILE))["logit_bias"]) if kind == "sigmoid" else 0.0
        want = []
        with torch.no_grad():
            for left, right in pixels:
                out = trained(images=left, texts=right)
                scale = float(out["logit_scale"])
                want.append(hand_loss(kind, out["zimg"], out["ztxt"], scale, bias))
        assert logged[step] == pytest.approx(sum(want) / 2, rel=1e-5, abs=1e-6), step
    assert logged[2] != logged[4]  # the model moved between the two


def test_a_bad_validation_source_is_an_error_naming_the_section(
    tmp_path, tiny_config, random_pair_data
):
    missing = SourceConfig(kind="csv", path=str(tmp_path / "missing.csv"))
    cfg = tiny_config(tmp_path, validation=ValidationConfig(every=1, image_text=(missing,)))
    with pytest.raises(ValueError, match=r"^validation \(its sources.*missing\.csv"):
        train(cfg, data=random_pair_data)


# ---- the logit-scale clamp ---------------------------------------------------------------------


@pytest.fixture
def logit_scales(
    tiny_config: Any, random_pairs: Any, factory: Any
) -> Callable[[Path, float], tuple[list[float], torch.Tensor]]:
    """`logit_scales(run_dir, max_logit_scale)`: a softmax run on one learnable batch from a
    logit scale of 90 with a large learning rate: the loss pushes the scale up. -> (logged
    scales, final t)."""

    def run(run_dir: Path, max_logit_scale: float) -> tuple[list[float], torch.Tensor]:
        batch = random_pairs(0)
        loop = LoopConfig(
            steps=8, batch_size=8, precision="fp32", device="cpu", max_logit_scale=max_logit_scale
        )
        cfg = tiny_config(run_dir, loop=loop)
        cfg = cfg.replace(
            model=ModelSection(
                variant="tiny-test", image_size=32, out_dim=32, temperature_init=90.0
            ),
            optim=cfg.optim.__class__(name="adamw", lr=0.05, wd=0.0),
            checkpoint=CheckpointConfig(every_steps=0),
        )
        result = train(cfg, data=factory(lambda s: batch))
        logged = [r["logit_scale"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
        return logged, result.model.t.detach()

    return run


def test_the_logit_scale_is_clamped_at_100_after_every_step(tmp_path, logit_scales):
    free, t_free = logit_scales(tmp_path / "free", 0.0)
    assert max(free) > 110  # unclamped, this run takes the scale past 100
    clamped, t = logit_scales(tmp_path / "clamped", 100.0)
    assert len(clamped) == 8 and all(s <= 100.0 + 1e-4 for s in clamped)
    assert clamped[-1] == pytest.approx(100.0, rel=1e-6)
    assert t.item() == torch.tensor(math.log(100.0)).item()  # exactly ln 100 in float32


# ---- Weights & Biases --------------------------------------------------------------------------


def wandb_records(path: Path) -> list[Any]:
    """The `wandb_internal_pb2.Record`s of a `run-<id>.wandb` file: LevelDB's log framing (32 KiB
    blocks; each fragment a 7-byte header of crc, length, type) after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # still being written
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_wandb_run(run_folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The history rows and the config of an offline run. wandb's service process writes the
    file after `finish()` returns: wait (up to a minute) for the run's exit record."""
    (path,) = run_folder.glob("run-*.wandb")
    deadline = time.monotonic() + 60
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{path}: no exit record after a minute"
        time.sleep(0.2)

    def items(values: Any) -> dict[str, Any]:  # a key is `key` or the parts of `nested_key`
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in values}

    history, config = [], {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(items(record.history.item))
        elif kind == "run":
            config = items(record.run.config.update)
    return history, config


def test_wandb_offline_run_logs_the_metrics_and_the_config(tmp_path, tiny_config, random_pair_data):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb-files"
    cfg = tiny_config(tmp_path / "run")
    cfg = cfg.replace(
        loop=LoopConfig(steps=3, batch_size=8, precision="fp32", device="cpu"),
        logging=LoggingConfig(
            run_dir=str(tmp_path / "run"),
            every_steps=1,
            progress=False,
            tensorboard=False,
            wandb=WandbConfig(
                enabled=True,
                project="clippo-test",
                name="tiny",
                mode="offline",
                dir=str(wandb_dir),
            ),
        ),
        validation=ValidationConfig(every=3, image_text=(HELDOUT,)),
        checkpoint=CheckpointConfig(every_steps=0),
    )
    train(cfg, data=random_pair_data)
    (folder,) = (wandb_dir / "wandb").glob("offline-run-*")
    history, config = read_wandb_run(folder)
    jsonl = read_metrics(tmp_path / "run" / "metrics.jsonl")
    by_step: dict[int, dict[str, Any]] = {}
    for row in history:
        by_step.setdefault(row["_step"], {}).update(row)
    assert sorted(by_step) == [1, 2, 3]
    for record in jsonl:  # every key and value of metrics.jsonl, at its step
        row = by_step[record["step"]]
        for key, value in record.items():
            if key != "step":
                assert row[key] == pytest.approx(value) if isinstance(value, float) else value
    assert {"loss", "lr", "grad_norm", "logit_scale", "val/loss"} <= set(by_step[3])
    assert config["loop"]["steps"] == 3  # the resolved training config

    # the W&B run's id is saved with the checkpoint, so a resumed run continues it
    state = json.loads((checkpoint_dir(tmp_path / "run", 3) / "trainer_state.json").read_text())
    assert folder.name.endswith(state["extra"]["wandb_id"])
    longer = cfg.replace(
        loop=LoopConfig(steps=4, batch_size=8, precision="fp32", device="cpu"),
        checkpoint=CheckpointConfig(every_steps=0, resume="auto"),
    )
    train(longer, data=random_pair_data)
    folders = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and folders[1].name.endswith(state["extra"]["wandb_id"])
    resumed, _ = read_wandb_run(folders[1])
    assert [row["_step"] for row in resumed if "loss" in row] == [4]


def test_wandb_needs_its_package_only_when_asked_for(
    tmp_path, monkeypatch, tiny_config, random_pair_data
):
    import importlib.util

    # as if wandb were not installed (it is, for the test above): only its lookup fails
    find_spec = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else find_spec(name, *a),
    )
    base: TrainConfig = tiny_config(tmp_path / "off")
    cfg = base.replace(checkpoint=CheckpointConfig(every_steps=0))
    train(
        cfg.replace(loop=LoopConfig(steps=1, batch_size=8, precision="fp32", device="cpu")),
        data=random_pair_data,
    )
    asked = cfg.replace(
        logging=LoggingConfig(
            run_dir=str(tmp_path / "on"), progress=False, wandb=WandbConfig(enabled=True)
        )
    )
    with pytest.raises(ValueError, match="wandb package is not installed"):
        train(asked, data=random_pair_data)


# ---- two processes -----------------------------------------------------------------------------

VALIDATION_TOML = """
[validation]
every = 2
batches = 2
[[validation.image_text]]
kind = "synthetic"
options = {textured = false, split = "heldout"}
"""


@pytest.mark.slow
def test_validation_and_fp16_under_ddp_match_a_single_process(tmp_path, torchrun):
    """Two gloo processes, each validating its half of every held-out batch (the loss gathers
    the halves), in fp16 with a gradient scaler and accumulation: the logged validation losses
    are the single process's."""
    logged = {}
    for nproc, accum in ((1, 1), (2, 2)):
        run_dir = torchrun(
            tmp_path,
            f"p{nproc}",
            nproc,
            extra_toml=VALIDATION_TOML,
            accum=accum,
            parallel="auto",
            resume="",
            loss="softmax",
            precision="fp16",
        )
        records = read_metrics(run_dir / "metrics.jsonl")
        logged[nproc] = {r["step"]: r["val/loss"] for r in records if "val/loss" in r}
        assert all(r["precision"] == "fp16" for r in records if "loss" in r)
    assert sorted(logged[1]) == sorted(logged[2]) == [2, 4]
    for step in (2, 4):  # fp16 autocast: the two runs round differently
        assert logged[2][step] == pytest.approx(logged[1][step], rel=2e-3), step
    assert logged[1][2] != logged[1][4]
