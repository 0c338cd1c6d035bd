"""Training, top to bottom: settings, data, model, optimiser, loop, validation, checkpoints.

Everything random draws from two generators (tile sampling/augmentation, and torch's global
one for dropout), both saved in every checkpoint, so ``resume`` replays a stopped run exactly.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import distributed

from ..io import storage
from .batches import BatchStream, make_batch_fn
from ..model.checkpoint import list_checkpoints, load, load_into, load_state, prune_checkpoints, save_state, save_weights
from ..config import Config, config_to_dict, dump_config, with_absolute_paths
from ..io.data import Intensity, Volume, labelled_arrays, load_labelled
from ..io.volumes import is_volume_path
from ..device import autocast_for, choose_precision, keep_freed_memory
from ..errors import ConfigError, DataError, TrainingError, TrainingInterrupted
from ..score.evaluate import FoldResult, ScoreReport
from ..io.files import atomic_write_bytes
from ..io.runfolder import open_run_folder
from ..model.affinities import affinity_loss
from .losses import segmentation_loss
from ..model.unet import UNet, create_model
from ..progress import progress_bar
from .runlog import RunLog
from .sampling import LazyLabelled, TileSampler, fold_split, load_volume_split
from .validation import FoldScorer, snapshot_of

__all__ = ["TrainingError", "build_model", "load_split", "train"]


def build_model(cfg: Config) -> UNet:
    m = cfg.model
    return create_model(m.preset, width=m.width, depth=m.depth, padding=m.padding, norm=m.norm, dropout=m.dropout,
                        init=m.init, head=m.head, offsets=m.offsets, in_channels=2 * cfg.data.context + 1)


def load_split(cfg: Config, min_size: int = 1, intensity: Intensity | None = None,
               arrays: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Volume | LazyLabelled, Volume | None]:
    """The training and validation slices of ``cfg.data.fold`` (None with ``data.train_ratio=1``:
    every slice trains); a Zarr or HDF5 volume's training sections stay on disk (tiles are read
    as they are drawn). ``arrays``: images and labels in memory, read in place of the files."""
    d = cfg.data
    if arrays is not None:
        vol = labelled_arrays(*arrays, intensity=intensity, intensity_mode=d.intensity)
    elif is_volume_path(d.images) and not storage.is_url(d.images):
        if d.context:
            raise ConfigError("data.context (2.5-D input) reads the images into memory: give them as a TIFF stack")
        return load_volume_split(d.images, d.labels, d.fold, d.train_ratio, d.foreground, d.mask_threshold, d.channel,
                                 d.intensity)
    else:
        vol = load_labelled(cfg.data.images, cfg.data.labels, cfg.data.foreground, min_size=min_size,
                            mask_threshold=cfg.data.mask_threshold, channel=cfg.data.channel,
                            intensity_mode=cfg.data.intensity, intensity=intensity)
    if vol.labels.min() == vol.labels.max():
        raise DataError(f"{cfg.data.labels if arrays is None else 'the labels given'}: every mask pixel is of one class; training needs both cell interior and "
                        "membrane (check data.foreground and data.mask_threshold)")
    if cfg.data.train_ratio == 1:
        return vol, None
    train_idx, val_idx = fold_split(len(vol), cfg.data.fold, cfg.data.train_ratio)
    return vol.subset(train_idx), vol.subset(val_idx)


def split_inner(train_vol, val_vol: Volume | None, inner: int) -> tuple[Volume, Volume | None, Volume | None]:
    """With ``inner`` > 0: the last ``inner`` training slices become the slices that choose the
    model, and the fold's validation slices are kept aside to score it once at the end."""
    if not inner:
        return train_vol, val_vol, None
    if isinstance(train_vol, LazyLabelled):
        raise ConfigError("data.inner_val reads the training slices into memory: give the images as a TIFF stack or folder")
    if inner >= len(train_vol):
        raise ConfigError(f"data.inner_val={inner} leaves no training slice of the fold's {len(train_vol)}")
    n = len(train_vol) - inner
    return train_vol.subset(list(range(n))), train_vol.subset(list(range(n, len(train_vol)))), val_vol


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


def make_adam(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam as one fused kernel where this PyTorch has it for the device (CPU since 2.4): on
    CPU the default per-tensor loop costs about 8 % of the lab net's step."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class TrainState:
    """Everything a checkpoint holds: model, optimiser, scheduler, loss scaler, weight average,
    the two random generators, the step and the best validation so far."""

    def __init__(self, cfg: Config, model: UNet, device: torch.device, precision: str) -> None:
        t = cfg.train
        self.model, self.device = model, device
        self.optimizer = make_adam(model.parameters(), t.lr, t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg))
        self.scaler = torch.amp.GradScaler(device.type, init_scale=t.loss_scale, enabled=precision == "fp16")
        self.ema = None
        if t.ema:
            # An exponential moving average of the weights (and batch-norm statistics) is what
            # validation scores and what best/last weights hold: it evens out step-to-step swings.
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
        self.sample_gen = torch.Generator().manual_seed(t.seed)
        self.batches: BatchStream | None = None  # once it runs, it knows where the generator stands
        self.step = 0
        self.best: dict[str, Any] = {"score": -1.0, "step": 0}
        self.run_config = config_to_dict(cfg) | {"model_resolved": asdict(model.cfg)}

    @property
    def weights_to_keep(self) -> UNet:
        """The weights that validation scores and best/last hold."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        sampler = self.batches.position if self.batches is not None else self.sample_gen.get_state()
        rng = {"sampler": sampler, "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        elif self.device.type == "mps":
            rng["mps"] = torch.mps.get_rng_state()
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "ema": self.ema.state_dict() if self.ema is not None else {}, "step": self.step, "best": self.best,
            "rng": rng, "config": self.run_config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.sample_gen.set_state(state["rng"]["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        elif self.device.type == "mps" and "mps" in state["rng"]:
            torch.mps.set_rng_state(state["rng"]["mps"])
        self.step, self.best = int(state["step"]), dict(state["best"])

    def save(self, ckpt_dir: Path, keep: int, snapshot: dict[str, Any] | None = None) -> None:
        """Write this step's checkpoint, or an earlier step's ``snapshot`` (whose validation was
        scored in the background) with the best validation known now; prune old ones."""
        state = self.state_dict() if snapshot is None else snapshot | {"best": dict(self.best)}
        save_state(ckpt_dir / f"step_{state['step']:06d}.pt", state)
        prune_checkpoints(ckpt_dir, keep, protect={self.best["step"]})


def _restore(state: TrainState, ctx: distributed.DistContext, ckpt_dir: Path, resume: str | bool) -> None:
    """Resume from ``resume`` (a checkpoint, or True for the newest in ``ckpt_dir``): rank 0
    reads it and every rank receives it."""
    saved = None
    if ctx.is_main and resume:
        found = list_checkpoints(ckpt_dir) if resume is True else [(None, resume)]  # a path or a URL
        if found:
            path = found[-1][1]
            saved = load_state(path, map_location="cpu")
            load_into(state.model, saved["model"], path)  # checks the architecture before broadcasting
            print(f"resumed from {path} at step {saved['step']}", flush=True)
    saved = ctx.broadcast(saved)  # the other ranks never read the output folder
    if saved is not None:
        state.load_state_dict(saved)


def _train_step(state: TrainState, net: torch.nn.Module, batch, cfg: Config, precision: str) -> float:
    """One optimiser step on this rank's slice of the global batch; returns its loss."""
    images, labels = batch
    t = cfg.train
    with autocast_for(state.device, precision):
        logits = net(images)
    offsets = state.model.cfg.offsets
    if offsets:  # the affinity head: labels are cell ids
        loss = affinity_loss(logits, labels, offsets, t.loss, t.membrane_weight)
    else:
        loss = segmentation_loss(logits, labels, t.loss, t.membrane_weight, t.skeleton_weight)
    if not torch.isfinite(loss) and not state.scaler.is_enabled():  # with fp16 the scaler skips the step
        raise TrainingError(f"loss became {loss.item()} at step {state.step + 1}; the last good checkpoint is kept "
                            f"in {storage.local_folder(cfg.out_dir) / 'checkpoints'}")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()  # DDP averages the gradients over ranks here
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    return loss.item()


# What a run writes into its folder: what --overwrite clears, and nothing else.
@contextmanager
def _interrupts_at_step_boundaries(on_step: Callable[[int], bool] | None = None):
    """Ctrl-C (SIGINT) during a step is held until the step ends, so the checkpoint saved on
    the way out holds whole steps only (a half-run forward pass would already have moved the
    batch-norm statistics) and a resumed run repeats the uninterrupted one exactly. ``on_step``
    (a caller's progress and cancel, as napari's) stops the run the same way by returning False."""
    pressed: list[int] = []
    if threading_main():
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    else:  # signals reach only the main thread; elsewhere Ctrl-C stays as it is
        previous = None
    try:
        yield lambda step: bool(pressed) or (on_step is not None and not on_step(step))
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def threading_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def train(cfg: Config, resume: str | bool = False, progress: bool = True, overwrite: bool = False,
          on_step: Callable[[int], bool] | None = None, data: tuple[np.ndarray, np.ndarray] | None = None
          ) -> FoldResult | None:
    """Train per ``cfg``; return the best weights and their validation (``None`` on ranks
    other than 0, which hold neither).

    Under ``torchrun`` each rank trains a slice of every global batch with
    DistributedDataParallel; only rank 0 reads or writes the output folder.

    Args:
        resume: False to start afresh; True to continue from the newest checkpoint in
            ``cfg.out_dir`` (starting afresh if there is none); or a checkpoint path.
        overwrite: replace the run already in ``cfg.out_dir`` instead of refusing it.
        on_step: called with the step after each one; returning False stops the run there, its
            checkpoint saved, as Ctrl-C does (:class:`TrainingInterrupted`).
        data: images (raw pixels, (H, W) or (N, H, W)) and labels (1 = cell interior, 0 =
            membrane) in memory, trained on in place of ``data.images`` and ``data.labels``
            (the napari widget's layers).
    """
    cfg = with_absolute_paths(cfg)
    ctx, device = distributed.setup(cfg.train.device, cfg.train.dist_timeout)
    try:
        if distributed.restarted_by_torchrun():  # workers restarted by torchrun continue what --overwrite began
            resume, overwrite = resume or True, False
        with storage.using(cfg.storage), open_run_folder(cfg.out_dir, resume, overwrite, enabled=ctx.is_main):
            return _train(cfg, ctx, device, resume, progress and ctx.is_main, on_step, data)
    finally:
        distributed.teardown(ctx)


@dataclass
class _Run:
    """A run ready to train: its state, data stream, network wrapper and log."""

    out: Path
    precision: str
    state: TrainState
    net: torch.nn.Module
    batches: BatchStream
    val: Volume | None  # None: every slice trains (data.train_ratio=1), nothing validates
    scorer: FoldScorer | None
    log: RunLog
    start: float
    best_validation: tuple[ScoreReport, np.ndarray, np.ndarray] | None = None  # report, probabilities, cells
    scored: Volume | None = None  # with data.inner_val: the fold's slices, which score the chosen model once


def _prepare(cfg: Config, ctx: distributed.DistContext, device: torch.device, resume: str | bool, progress: bool,
             data: tuple[np.ndarray, np.ndarray] | None = None) -> _Run:
    """Data, model, optimiser, and where a stopped run left off; the run's config.yaml once all loaded."""
    t, out = cfg.train, storage.local_folder(cfg.out_dir)
    chosen = choose_precision(t.precision, device)
    precision = chosen.precision
    if progress:
        print(f"{device.type}, {chosen}", flush=True)
    if t.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by the {ctx.world_size} processes")
    if t.threads:
        torch.set_num_threads(t.threads)
    if device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(t.seed)
    start = time.perf_counter()
    model = build_model(cfg)
    in_size = model.fit_input_size(t.tile)
    out_size = model.output_size(in_size)
    # fine-tuning scales its images as the starting model's run did: it sees what it learnt from
    start_from = load(t.init) if t.init and not resume else None
    intensity = start_from.intensity if start_from else None
    train_vol, val_vol, scored_vol = split_inner(*load_split(cfg, intensity=intensity, arrays=data), cfg.data.inner_val)
    if start_from is not None:
        load_into(model, start_from.network.state_dict(), start_from.path)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    state = TrainState(cfg, model, device, precision)
    state.run_config["intensity"] = asdict(train_vol.intensity)  # prediction scales new images the same way
    if progress:
        print(f"images: {train_vol.intensity.how} ({train_vol.intensity.dtype}), scaled from "
              f"{train_vol.intensity.low:g}..{train_vol.intensity.high:g} to 0..1", flush=True)
    _restore(state, ctx, out / "checkpoints", resume)
    sampler = TileSampler(train_vol, in_size, out_size, state.sample_gen, context=cfg.data.context)
    per_rank = t.batch_size // ctx.world_size
    next_batch = make_batch_fn(sampler, cfg.augment, t.batch_size, slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank),
                               out_size, device, memory_format, cells=bool(model.cfg.offsets))
    net: torch.nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if ctx.is_main:  # the run starts: its settings are saved only now, once everything loaded
        atomic_write_bytes(out / "config.yaml", dump_config(cfg).encode())
    ahead = t.prefetch if t.prefetch is not None else (2 if device.type == "cuda" else 0)
    state.batches = BatchStream(next_batch, state.sample_gen, ahead, device)
    # Validation along the way predicts without test-time turns (8x cheaper); the weights the run
    # keeps are scored again with them at the end (_finish), as they will predict.
    scorer = None if val_vol is None else FoldScorer(val_vol, replace(cfg.predict, tta=False), cfg.segment, precision,
                                                      _scores_in_background(t.background_scoring, ctx))
    return _Run(out, precision, state, net, state.batches, val_vol, scorer, RunLog(out, ctx.is_main, state.step), start,
                scored=scored_vol)


def _scores_in_background(asked: bool | None, ctx: distributed.DistContext) -> bool:
    """Unset: on (a GPU's steps leave the CPU free for scoring; on 2 CPU cores the scoring
    thread still gained more than it took from the steps: docs/speed.md). Never under
    torchrun, whose ranks all learn the best step at the validation itself."""
    if ctx.enabled:
        if asked:
            raise ConfigError("train.background_scoring is not available with several processes (torchrun); unset it")
        return False
    return True if asked is None else asked


def _validate(run: _Run, cfg: Config, ctx: distributed.DistContext, bar) -> None:
    """Rank 0 predicts the fold with the weights of this step. Scored in the foreground, its
    scores are recorded now and every rank learns the best step; scored in the background, they
    are recorded when they arrive, and this step's checkpoint is written then, holding them."""
    state = run.state
    if ctx.is_main:
        run.log.validation_started(state.step)
        snapshot = snapshot_of(state.state_dict()) if run.scorer.background else None
        run.scorer.submit(state.step, state.weights_to_keep, snapshot)
    if not run.scorer.background:
        _record_scores(run, cfg, bar, wait=True)
        state.best.update(ctx.broadcast(dict(state.best)))


def _record_scores(run: _Run, cfg: Config, bar, wait: bool) -> None:
    """Log the validations scored so far in step order, keep the best weights, and write the
    checkpoints that waited for their scores."""
    state, select_by = run.state, cfg.train.select_by
    for done in run.scorer.finished(wait) if run.scorer else []:
        run.log.log_validation(done.step, done.report)
        mean = done.report.mean
        bar.write(f"step {done.step}: val lab dice {mean['lab_dice']:.4f}  V_rand {mean['v_rand']:.4f}  "
                  f"V_info {mean['v_info']:.4f}  pixel error (0.5) {mean['pixel_error_05']:.4f}  cells: "
                  f"V_rand {mean['cells_v_rand']:.4f}  V_info {mean['cells_v_info']:.4f}"
                  + ("  (without test-time turns)" if cfg.predict.tta else ""))
        score = float(done.step) if select_by == "last" else mean[select_by]  # 'last': the slices choose nothing
        if score > state.best["score"]:
            state.best.update(score=score, step=done.step)
            save_weights(run.out / "best.safetensors", done.model, state.model.cfg,
                         {"step": done.step, "val": mean, "config": state.run_config})
            run.best_validation = done.report, done.probs, done.cells
        if done.snapshot is not None:
            state.save(run.out / "checkpoints", cfg.train.keep, done.snapshot)


def _checkpoint_due(run: _Run, cfg: Config, bar, validating: bool) -> bool:
    """Whether this step writes a checkpoint now. One between validations first waits for the
    scores still being computed, so that it holds the best validation up to its step."""
    t = cfg.train
    due = validating or bool(t.checkpoint_every and run.state.step % t.checkpoint_every == 0)
    if due and run.scorer and run.scorer.background:
        if validating:
            return False  # written with its scores
        _record_scores(run, cfg, bar, wait=True)
    return due


def _train(cfg: Config, ctx: distributed.DistContext, device: torch.device, resume: str | bool, progress: bool,
           on_step: Callable[[int], bool] | None = None, data: tuple[np.ndarray, np.ndarray] | None = None
           ) -> FoldResult | None:
    t = cfg.train
    run = _prepare(cfg, ctx, device, resume, progress, data)
    state, log, ckpt_dir = run.state, run.log, run.out / "checkpoints"

    # --- the loop: sample, step, log, validate, checkpoint -------------------------------
    state.model.train()
    if t.freeze_norm:
        for module in state.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    bar = progress_bar(t.steps, desc="train", unit="step", enabled=progress, initial=state.step)
    try:
        with _interrupts_at_step_boundaries(on_step) as interrupt_pressed:
            while state.step < t.steps:
                loss = _train_step(state, run.net, next(run.batches), cfg, run.precision)
                state.step += 1
                log.add_loss(loss)
                bar.update(1)
                last = state.step == t.steps
                if state.step % t.log_every == 0 or last:
                    row = log.log_training(state.step, ctx.mean(log.window_loss()), state.scheduler.get_last_lr()[0],
                                           t.batch_size)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}")
                val_step = bool(t.val_every and state.step % t.val_every == 0) or last
                validating = run.scorer is not None and val_step  # nothing validates when every slice trains
                log.pause()  # what follows is not training time
                if validating:
                    _validate(run, cfg, ctx, bar)
                log.end_step()
                _record_scores(run, cfg, bar, wait=False)  # scores that arrived from the background
                if ctx.is_main and _checkpoint_due(run, cfg, bar, val_step):
                    state.save(ckpt_dir, t.keep)
                log.resume()
                if interrupt_pressed(state.step):
                    raise KeyboardInterrupt
        _record_scores(run, cfg, bar, wait=True)
    except KeyboardInterrupt:
        if ctx.is_main:
            _record_scores(run, cfg, bar, wait=True)
            state.save(ckpt_dir, t.keep)
        raise TrainingInterrupted(state.step, f"checkpoints/step_{state.step:06d}.pt") from None
    finally:
        if run.scorer:
            run.scorer.close()
        run.batches.close()
        bar.close()
        log.close()
    return _finish(run, cfg, ctx, device)


def _finish(run: _Run, cfg: Config, ctx: distributed.DistContext, device: torch.device) -> FoldResult | None:
    """Save the last weights; on rank 0 hand back the best ones with their validation."""
    state = run.state
    train_s = time.perf_counter() - run.start
    if ctx.is_main:
        save_weights(run.out / "last.safetensors", state.weights_to_keep, state.model.cfg,
                     {"step": state.step, "config": state.run_config})
    ctx.barrier()
    if not ctx.is_main:
        return None
    if run.val is None:  # nothing validated: the last weights are the run's
        last_model = load(run.out / "last.safetensors", device).network
        return FoldResult(run_dir=run.out, step=state.step, seconds={"train": train_s}, best_path=run.out / "last.safetensors",
                          model=last_model, precision=run.precision)
    best_path = run.out / "best.safetensors"
    best_model = load(best_path, device).network
    volume = run.val if run.scored is None else run.scored
    # resumed after the best step, scored apart, or to be scored with the test-time turns it predicts with
    if run.best_validation is None or run.scored is not None or cfg.predict.tta:
        scorer = FoldScorer(volume, cfg.predict, cfg.segment, run.precision, background=False)
        scorer.submit(int(run.state.best["step"]), best_model)
        done = scorer.finished()[0]
        run.best_validation = done.report, done.probs, done.cells
    report, probs, cells = run.best_validation
    return FoldResult(fold=cfg.data.fold, run_dir=run.out, step=int(state.best["step"]), report=report, volume=volume,
                      probs=probs, cells=cells, seconds={"train": train_s, "eval": time.perf_counter() - run.start - train_s},
                      best_path=best_path, model=best_model, precision=run.precision, chosen_by=cfg.chosen_by())
