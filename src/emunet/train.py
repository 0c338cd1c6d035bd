"""Training, top to bottom: settings, data, model, optimiser, loop, validation, checkpoints.

Everything random draws from two generators (tile sampling/augmentation, and torch's global
one for dropout), both saved in every checkpoint, so ``resume`` replays a stopped run exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed
from .augment import augment_batch
from .checkpoint import atomic_write_bytes, list_checkpoints, load_into, load_model, load_state, prune_checkpoints, save_state, save_weights
from .config import Config, ConfigError, config_to_dict, dump_config
from .data import TileSampler, Volume, fold_split, load_labelled, to_network_input
from .evaluate import CHALLENGE_NAMES, score_volume
from .losses import segmentation_loss
from .metrics import SCORE_NAMES
from .model import UNet, create_model
from .tiling import autocast_for

__all__ = ["resolve_device", "resolve_precision", "build_model", "load_split", "train"]

CSV_FIELDS = ["step", "loss", "lr", "images_per_s", "train_s", "wall_s", *[f"val_{k}" for k in (*SCORE_NAMES, *CHALLENGE_NAMES)]]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return "bf16" if device.type == "cpu" else "fp16"


def build_model(cfg: Config) -> UNet:
    m = cfg.model
    return create_model(m.preset, width=m.width, depth=m.depth, padding=m.padding, norm=m.norm, dropout=m.dropout,
                        init=m.init, in_channels=2 * cfg.data.context + 1)


def load_split(cfg: Config, min_size: int = 1) -> tuple[Volume, Volume]:
    """The training and validation slices of ``cfg.data.fold``."""
    vol = load_labelled(cfg.data.images, cfg.data.labels, cfg.data.foreground, min_size=min_size)
    train_idx, val_idx = fold_split(len(vol), cfg.data.fold, cfg.data.train_ratio)
    return vol.subset(train_idx), vol.subset(val_idx)


def _lr_factor(cfg: Config):
    t = cfg.train

    def factor(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _read_csv(path: Path, up_to: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= up_to]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def _read_jsonl(path: Path, up_to: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if int(r["step"]) <= up_to]


def make_adam(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam as one fused kernel where this PyTorch has it for the device (CPU since 2.4): on
    CPU the default per-tensor loop costs about 8 % of the lab net's step."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def train(cfg: Config, resume: str | bool = False, progress: bool = True) -> Path:
    """Train per ``cfg``; return the path of the best weights (``best.safetensors``).

    Under ``torchrun`` each rank trains a slice of every global batch with
    DistributedDataParallel; only rank 0 reads or writes the output folder.

    Args:
        resume: False to start afresh; True to continue from the newest checkpoint in
            ``cfg.out_dir`` (starting afresh if there is none); or a checkpoint path.
    """
    ctx, device = distributed.setup(cfg.train.device, cfg.train.dist_timeout)
    try:
        return _train(cfg, ctx, device, resume or distributed.restarted_by_torchrun(), progress and ctx.is_main)
    finally:
        distributed.teardown(ctx)


def _train(cfg: Config, ctx: distributed.DistContext, device: torch.device, resume: str | bool, progress: bool) -> Path:
    t = cfg.train
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    precision = resolve_precision(t.precision, device)
    if t.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by the {ctx.world_size} processes")
    per_rank = t.batch_size // ctx.world_size
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    if ctx.is_main:
        # Fail on an unwritable output folder now, not after the first hours of training.
        atomic_write_bytes(out / "config.yaml", dump_config(cfg).encode())
        for stale in ckpt_dir.glob(".*.tmp") if ckpt_dir.is_dir() else []:
            stale.unlink()  # left by a run killed in the middle of a write

    # --- data: every rank draws the same global batch and trains on its own slice -----------
    model = build_model(cfg)
    in_size = model.fit_input_size(t.tile)
    out_size = model.output_size(in_size)
    train_vol, val_vol = load_split(cfg)
    sample_gen = torch.Generator().manual_seed(t.seed)
    sampler = TileSampler(train_vol, in_size, out_size, sample_gen, context=cfg.data.context)

    # --- model and optimiser ------------------------------------------------------------
    if t.init and not resume:
        init_model, _ = load_model(t.init)
        load_into(model, init_model.state_dict(), Path(t.init))
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    optimizer = make_adam(model.parameters(), t.lr, t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    scaler = torch.amp.GradScaler(device.type, init_scale=t.loss_scale, enabled=precision == "fp16")
    run_config = config_to_dict(cfg) | {"model_resolved": asdict(model.cfg)}
    ema = None
    if t.ema:
        # An exponential moving average of the weights (and batch-norm statistics) is what
        # validation scores and what best/last weights hold: it evens out step-to-step swings.
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
    scored = ema.module if ema is not None else model

    step, best = 0, {"score": -1.0, "step": 0}
    rows: list[dict] = []
    val_log: list[dict] = []  # per-slice scores of every validation (validation.jsonl)
    state = None
    if ctx.is_main:
        start_path = None
        if resume is True:
            found = list_checkpoints(ckpt_dir)
            start_path = found[-1][1] if found else None
        elif resume:
            start_path = Path(resume)
        if start_path is not None:
            state = load_state(start_path, map_location="cpu")
            load_into(model, state["model"], start_path)  # checks the architecture before broadcasting
            print(f"resumed from {start_path} at step {state['step']}", flush=True)
    state = ctx.broadcast(state)  # the other ranks never read the output folder
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        sample_gen.set_state(state["rng"]["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        step, best = int(state["step"]), dict(state["best"])
        if ctx.is_main:
            rows = _read_csv(out / "metrics.csv", step)
            val_log = _read_jsonl(out / "validation.jsonl", step)
    del state
    net = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if ctx.is_main:
        _write_csv(out / "metrics.csv", rows)
        _write_jsonl(out / "validation.jsonl", val_log)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)

    def checkpoint(at: int) -> None:
        if not ctx.is_main:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "ema": ema.state_dict() if ema is not None else {},
            "step": at,
            "best": best,
            "rng": {"sampler": sample_gen.get_state(), "torch": torch.get_rng_state()}
            | ({"cuda": torch.cuda.get_rng_state()} if device.type == "cuda" else {}),
            "config": run_config,
        }
        save_state(ckpt_dir / f"step_{at:06d}.pt", state)
        prune_checkpoints(ckpt_dir, t.keep, protect={best["step"]})

    def validate(at: int) -> dict[str, float] | None:
        """Rank 0 scores the fold; every rank learns the best step."""
        mean = None
        if ctx.is_main:
            report = score_volume(scored, val_vol, cfg.predict, precision)
            mean = report["mean"]
            val_log.append({"step": at, "mean": mean, "slices": report["slices"]})
            _write_jsonl(out / "validation.jsonl", val_log)
            for k, v in mean.items():
                writer.add_scalar(f"val/{k}", v, at)
            if mean[t.select_by] > best["score"]:
                best.update(score=mean[t.select_by], step=at)
                save_weights(out / "best.safetensors", scored, model.cfg, {"step": at, "val": mean, "config": run_config})
        best.update(ctx.broadcast(dict(best)))
        return mean

    # --- loop ---------------------------------------------------------------------------
    model.train()
    bar = tqdm(total=t.steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    # cumulative seconds over resumed segments: training only, and wall time with validation
    train_s = float(rows[-1]["train_s"]) if rows and rows[-1].get("train_s") else 0.0
    wall_s = float(rows[-1]["wall_s"]) if rows and rows[-1].get("wall_s") else 0.0
    segment_start = time.perf_counter()
    wall_base = wall_s
    mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    try:
        while step < t.steps:
            images, labels = sampler.sample(t.batch_size)
            # Augment where the model runs: a GPU warps the batch in a fraction of the CPU's time.
            # The random draws still come from the CPU generator, so a run repeats on any device.
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            images, labels = augment_batch(images, labels, cfg.augment, sample_gen)
            images, labels = images[mine], labels[mine]
            if in_size != out_size:
                crop = (in_size - out_size) // 2
                labels = labels[:, crop : crop + out_size, crop : crop + out_size]
            images = to_network_input(images).contiguous(memory_format=memory_format)
            with autocast_for(device, precision):
                logits = net(images)
            loss = segmentation_loss(logits, labels, t.loss, t.membrane_weight, t.skeleton_weight)
            if not torch.isfinite(loss) and not scaler.is_enabled():  # with fp16 the scaler skips the step
                raise TrainingError(f"loss became {loss.item()} at step {step + 1} (rank {ctx.rank}); "
                                    f"the last good checkpoint is kept in {ckpt_dir}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # DDP averages the gradients over ranks here
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            window_loss += loss.item()
            window_steps += 1
            bar.update(1)

            row: dict | None = None
            if step % t.log_every == 0 or step == t.steps:
                mean_loss = ctx.mean(window_loss / window_steps)
                elapsed = time.perf_counter() - window_start
                train_s += elapsed
                row = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                       "images_per_s": window_steps * t.batch_size / elapsed, "train_s": train_s}
                if writer is not None:
                    for key in ("loss", "lr", "images_per_s"):
                        writer.add_scalar(f"train/{key}", row[key], step)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}")
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if (t.val_every and step % t.val_every == 0) or step == t.steps:
                val_start = time.perf_counter()
                mean = validate(step)
                if mean is not None:
                    if row is None:  # a validation between log steps: training seconds so far
                        row = {"step": step, "train_s": train_s + val_start - window_start}
                    row |= {f"val_{k}": v for k, v in mean.items()}
                    bar.write(f"step {step}: val lab dice {mean['lab_dice']:.4f}  V_rand {mean['v_rand']:.4f}  "
                              f"V_info {mean['v_info']:.4f}  pixel error (0.5) {mean['pixel_error']:.4f}")
            if row is not None and ctx.is_main:
                row["wall_s"] = wall_base + time.perf_counter() - segment_start
                rows.append(row)
                _write_csv(out / "metrics.csv", rows)
            if (t.val_every and step % t.val_every == 0) or (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.steps:
                checkpoint(step)
            if row is not None and "val_lab_dice" in row:
                window_start += time.perf_counter() - val_start  # training speed leaves validation out
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step)
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if ctx.is_main:
        save_weights(out / "last.safetensors", scored, model.cfg, {"step": step, "config": run_config})
    ctx.barrier()
    return out / "best.safetensors"
