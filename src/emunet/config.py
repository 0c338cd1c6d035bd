"""Run settings: typed dataclasses with defaults, filled from YAML and ``key=value`` overrides.

YAML is read with ``yaml.safe_load`` and only into known fields, so a config file can set
values but never name Python objects to import. Every run writes its resolved config.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .io.pixels import is_microscope_pixel
from .io.storage import StorageConfig
from .model.bundled import names_a_model
from .model.checkpoint import Checkpoint
from .model.unet import PRESETS, UNetConfig

__all__ = ["ConfigError", "DataConfig", "ModelConfig", "TrainConfig", "PredictConfig", "Config", "load_config", "with_overrides",
           "dump_config", "with_absolute_paths", "run_settings", "data_url_overrides", "AugmentConfig", "SegmentConfig",
           "LONG_RANGE_STRIDES"]


@dataclass
class AugmentConfig:
    """Args:
    flip: random horizontal and vertical flips.
    rotate90: random 0/90/180/270-degree turns.
    brightness: add a uniform shift in [-b, b] to each image (images are in [0, 1]); 0 disables.
    elastic_std: std in pixels of the coarse grid's displacements; 0 disables.
    elastic_grid: points per side of the coarse grid (3 in the paper).
    elastic_prob: share of samples that are deformed.
    rotate: turn each sample by a uniform random angle in [-rotate, rotate] degrees (on top of
        the 90-degree turns; oblique membranes at every angle); 0 disables.
    scale: zoom each sample by a factor drawn log-uniformly in [1/(1+scale), 1+scale]; 0 disables.
    blur: Gaussian blur of each image with a sigma drawn uniformly in [0, blur] px (an oblique
        membrane is a blurred one); 0 disables.
    contrast: scale each image's deviations from its mean by a factor drawn uniformly in
        [1 - contrast, 1 + contrast]; 0 disables.
    gamma: raise each image to a power drawn log-uniformly in [1/(1+gamma), 1+gamma] (another
        detector's response curve); 0 disables.
    noise: add Gaussian noise of a std drawn uniformly in [0, noise] (images in [0, 1]); 0 disables.
    poisson: shot noise of a beam of a number of electrons per pixel drawn log-uniformly between
        ``poisson`` and 50 times as many (a dose ``poisson`` = the noisiest); 0 disables.
    defects: share of samples with a section defect: a dark band or a missing one (the image's
        mean) across the tile, 4 to 24 px wide, or, for 2.5-D input, a neighbouring section
        shifted by up to 8 px (misaligned); the mask is unchanged; 0 disables.

    The defaults are the lab's flips and brightness with the U-Net paper's elastic warps; the
    intensity settings are off, so configs without them train as before.
    """

    flip: bool = True
    rotate90: bool = True
    brightness: float = 0.2
    elastic_std: float = 10.0
    elastic_grid: int = 3
    elastic_prob: float = 1.0
    rotate: float = 0.0
    scale: float = 0.0
    blur: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0
    poisson: float = 0.0
    defects: float = 0.0

    def validate(self) -> None:
        ConfigError.check([
            (0.0 <= self.brightness <= 1.0, f"augment.brightness must be 0..1, got {self.brightness}"),
            (self.elastic_std >= 0.0, f"augment.elastic_std must be >= 0 px, got {self.elastic_std}"),
            (self.elastic_grid >= 2, f"augment.elastic_grid must be at least 2 points per side, got {self.elastic_grid}"),
            (0.0 <= self.elastic_prob <= 1.0, f"augment.elastic_prob must be 0..1, got {self.elastic_prob}"),
            (0.0 <= self.rotate <= 180.0, f"augment.rotate must be 0..180 degrees, got {self.rotate}"),
            (0.0 <= self.scale <= 1.0, f"augment.scale must be 0..1 (zoom up to 1 + scale), got {self.scale}"),
            (0.0 <= self.blur <= 10.0, f"augment.blur must be 0..10 px (the largest blur sigma), got {self.blur}"),
            (0.0 <= self.contrast < 1.0, f"augment.contrast must be in [0, 1), got {self.contrast}"),
            (0.0 <= self.gamma <= 2.0, f"augment.gamma must be 0..2 (powers up to 1 + gamma), got {self.gamma}"),
            (0.0 <= self.noise <= 0.5, f"augment.noise must be a std of 0..0.5, got {self.noise}"),
            (self.poisson == 0 or self.poisson >= 1, f"augment.poisson must be >= 1 electron per pixel (0 = off), got "
                                                     f"{self.poisson}"),
            (0.0 <= self.defects <= 1.0, f"augment.defects must be a share of 0..1, got {self.defects}"),
        ])


LONG_RANGE_STRIDES = (1, 2, 4, 8)  # segment.long_range_stride's choices


@dataclass
class SegmentConfig:
    """How predictions become cells (``unet predict --segment``, and the segmentation scores of
    validation, ``evaluate`` and ``cv``).

    Args:
        bias: the affinity at which a nearest-neighbour edge turns from 'apart' to 'together'
            in the mutex watershed.
        long_range_bias: the same for the longer-range edges; above ``bias`` it favours
            splitting (a long-range edge is trusted to join two pixels only when sure).
        seed_threshold: the membrane head's seeds: connected regions of the interior map above it.
        seed_dynamics: when above 0, the membrane head's seeds are instead the map's maxima that
            stand at least this much above the map around them (h-maxima), where the map says
            interior (above 0.5): a faint wall that never falls below ``seed_threshold`` still
            parts two seeds if it dips this much (a model whose walls are all faint on a stack);
            0 = off.
        min_size: segments of fewer pixels are merged into their neighbours (0 = keep all).
        long_range_stride: the mutex watershed's long-range edges are drawn only on every
            this-many-th row and column (the nearest-neighbour edges everywhere), as the field's
            mutex watersheds subsample them: 2 gave cells as good or better on ISBI and on another
            lab's stack, in half the time (docs/volumes.md); 1 = every pixel, as before.
        calibrate: the mutex watershed's long-range bias taken from the stack's own affinities:
            lowered from ``long_range_bias`` by 0.05 at a time (to 0.4 at the lowest) while more
            than 5 % of the cells' walls cut pixel pairs that the nearest-neighbour affinities
            call connected (a model on a stack it has not seen pushes cells apart with unsure
            long-range edges where no membrane is; on ISBI the share is 2-3 %).
        link_sections: join each section's cells to the next section's into 3-D objects (a cell
            and its mutual best match by overlap, IoU at least ``link_iou``); without it the ids
            are per section (1..n on every section).
        link_iou: the least intersection over union of two linked cells (docs/volumes.md).

    The membrane head's seeds lie where the map says interior is likelier than membrane (0.5, the
    map's own decision boundary): on ISBI folds 0, 1, 2 and on another microscope's stack it
    scores at or above 0.8, the earlier choice, which split that stack's cells by 0.03
    (docs/transfer.md#cells-as-good-as-their-map). The mutex watershed's biases scored best on
    ISBI folds 0, 2, 3 and 4 (bias and long_range_bias 0.3-0.6, min_size 20-100:
    docs/affinities.md).
    """

    bias: float = 0.5
    long_range_bias: float = 0.5
    seed_threshold: float = 0.5
    seed_dynamics: float = 0.0
    min_size: int = 50
    long_range_stride: int = 2
    calibrate: bool = True
    link_sections: bool = False
    link_iou: float = 0.3

    def validate(self) -> None:
        ConfigError.check([
            (0.0 < self.bias < 1.0, f"segment.bias must be in (0, 1), got {self.bias}"),
            (0.0 < self.long_range_bias < 1.0, f"segment.long_range_bias must be in (0, 1), got {self.long_range_bias}"),
            (0.0 < self.seed_threshold < 1.0, f"segment.seed_threshold must be in (0, 1), got {self.seed_threshold}"),
            (0.0 <= self.seed_dynamics < 1.0, f"segment.seed_dynamics must be in [0, 1), got {self.seed_dynamics}"),
            (self.min_size >= 0, f"segment.min_size must be >= 0 pixels, got {self.min_size}"),
            (self.long_range_stride in LONG_RANGE_STRIDES,
             f"segment.long_range_stride must be 1, 2, 4 or 8 pixels, got {self.long_range_stride}"),
            (0.0 < self.link_iou <= 1.0, f"segment.link_iou must be in (0, 1], got {self.link_iou}"),
        ])


@dataclass
class DataConfig:
    """Args:
    images: training images: a multi-page TIFF or a folder of PNG/TIFF files.
    labels: their masks (same layout; folders are matched by file name).
    test_images: images that the main job segments after training (optional).
    foreground: mask value of the foreground class (ISBI: 255 = cell interior).
    mask_threshold: binarise masks that are not two-valued (antialiased or resized): values at
        or above it are the high value; null (the default) requires two-valued masks.
    channel: the channel to read from images with several (ImageJ hyperstacks, OME-TIFF),
        counting from 0; null for single-channel images.
    intensity: how pixel values become [0, 1], chosen once from the training images and kept in
        the checkpoints for prediction: 'auto' (8-bit by 255, other integers by the bit depth
        their largest value needs, e.g. 12-bit by 4095; floats as they are in [0, 1], else by
        the data set's range) or 'percentile' (the 0.5 and 99.5 percentiles, clipped).
    fold: cross-validation fold (the lab's split; fold 1 validates on ISBI slices 4,6,7,9,18,19).
    train_ratio: share of images that train; the rest validate. 1 = every slice trains and none
        validates (a model for use, as the bundled ones are trained): the last step's weights are
        kept, and ``unet train`` is the command for it (``run`` and ``cv`` score a fold).
    inner_val: how many of the fold's training slices choose the model instead (validation during
        training, ``train.select_by``); the fold's own slices then score the chosen model once, at
        the end, so its figures come from slices that did not choose it. 0 = the fold's slices do
        both (the lab's way).
    pixel_size: the training images' pixel size in nanometres (ISBI: 4), kept in the checkpoint:
        prediction rescales images of another pixel size (from their metadata, or
        ``--pixel-size``) to it and back. Unset: none known, images are taken as they are.
    context: neighbouring sections on each side that the model sees as extra input channels
        (2.5-D input: 2 * context + 1 channels; 0 = each slice alone, the lab's). The images
        must be consecutive sections of one stack, as the ISBI volumes are.
    """

    images: str = "../shared/data/isbi2012/train-volume.tif"
    labels: str = "../shared/data/isbi2012/train-labels.tif"
    test_images: str | None = "../shared/data/isbi2012/test-volume.tif"
    foreground: int = 255
    mask_threshold: float | None = None
    channel: int | None = None
    intensity: str = "auto"
    fold: int = 1
    train_ratio: float = 0.8
    inner_val: int = 0
    pixel_size: float | None = None
    context: int = 0

    def validate(self) -> None:
        ConfigError.check([
            (self.fold >= 0, "data.fold must be >= 0"),
            (0.0 < self.train_ratio <= 1.0, f"data.train_ratio must be in (0, 1], got {self.train_ratio}"),
            (self.train_ratio < 1.0 or not self.inner_val,
             "data.train_ratio=1 trains on every slice and data.inner_val sets some aside to choose the model: use one"),
            (0 <= self.context <= 8, f"data.context must be 0..8 neighbouring sections, got {self.context}"),
            (self.pixel_size is None or is_microscope_pixel(self.pixel_size),
             f"data.pixel_size must be a microscope's pixel size in 0.1 .. 1e6 nm (1 mm), got {self.pixel_size}"),
            (self.inner_val >= 0, f"data.inner_val must be a number of slices >= 0, got {self.inner_val}"),
            (self.channel is None or self.channel >= 0, f"data.channel must be >= 0, got {self.channel}"),
            (self.intensity in ("auto", "percentile"), f"data.intensity must be 'auto' or 'percentile', got {self.intensity!r}"),
        ])


@dataclass
class ModelConfig:
    """A preset from the model registry, with optional overrides (null keeps the preset's).

    init: how fresh weights are drawn, 'lab' (the MindSpore lab's truncated normal, the
    default of unet_medical and unet_paper) or 'torch' (PyTorch's defaults, unet_cpu's);
    not to be confused with train.init, a checkpoint to start from.
    head: 'membrane' (the lab's: cell interior against membrane, softmax) or 'affinities' (for
    each offset, the probability that a pixel and its partner lie in one cell; segmented into
    cells by the mutex watershed). Unset: the preset's (membrane).
    offsets: the affinity head's [dy, dx] offsets; unset: [[-1, 0], [0, -1], [-3, 0], [0, -3],
    [-9, 0], [0, -9], [-27, 0], [0, -27]].
    """

    preset: str = "unet_medical"
    width: int | None = None
    depth: int | None = None
    padding: str | None = None
    norm: str | None = None
    dropout: float | None = None
    init: str | None = None
    head: str | None = None
    offsets: list | None = None

    def validate(self) -> None:
        """The preset exists and the overrides make a valid network (checked before anything is
        written or built)."""
        if self.preset not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "preset" and v is not None}
        try:
            UNetConfig(**{**dataclasses.asdict(PRESETS[self.preset]()), **fields})
        except (ConfigError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


# Validation scores that can pick the best weights: the map's, or its cells' (label images).
SELECT_BY = ("lab_dice", "v_rand", "v_info", "cells_v_rand", "cells_v_info", "last")


@dataclass
class TrainConfig:
    """Args:
    steps: optimiser steps.
    batch_size: tiles per step.
    tile: output side of a training tile; the input adds the network's border.
    lr, weight_decay: Adam's (the lab: 1e-4, 5e-4).
    schedule: 'constant' or 'cosine' (decay to lr * min_lr_ratio), after warmup_steps.
    loss: 'ce' (softmax cross-entropy) or 'ce+dice'; for the affinity head, binary cross-entropy
        of each offset's channel, plus the soft dice of the pairs that belong apart.
    membrane_weight: cross-entropy weight of class 0 (membrane) against class 1 (1 = the lab's);
        for the affinity head, of the pairs that belong apart.
    skeleton_weight: weight of the skeleton-recall term (membrane probability on the labels'
        membrane centre lines), which charges gaps in thin membranes; 0 = off (the lab's).
    precision: 'auto' (fp16 with a gradient scaler on CUDA; bf16 on a CPU that runs it natively,
        AMX or AVX512-BF16, else fp32; fp32 on Apple's MPS), 'fp32', 'bf16', 'fp16'.
    loss_scale: initial loss scale for fp16 (the lab fixes 1024).
    seed: makes runs repeatable.
    val_every: validate (and checkpoint) every N steps; 0 = only at the end.
    select_by: what picks best.safetensors: 'last' (the default), the last validated step, so
        that the validation slices score a model they did not choose; or a validation score:
        'lab_dice', 'v_rand' or 'v_info' of the interior map (at the challenge's best threshold),
        'cells_v_rand' / 'cells_v_info' of the cells segmented from it (the mutex watershed for the
        affinity head). A score chooses on ``data.inner_val`` slices set aside from training if
        given, else on the validation slices themselves, whose figures are then optimistic
        (reports say which: ``chosen_by`` in eval.json).
    checkpoint_every: save a checkpoint every N steps; 0 = at validation only.
    keep: newest checkpoints kept (the best is always kept too).
    log_every: steps between log lines in the CSV and TensorBoard.
    device: 'auto' (CUDA, else Apple's MPS, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.
    init: weights to start from (fine-tuning): a bundled model's name (``unet models``), or
        .safetensors, .pt or the lab's MindSpore .ckpt.
    ema: decay of an exponential moving average of the weights that validation and the saved
        weights use (e.g. 0.99); 0 = off.
    dist_timeout: seconds a collective waits under torchrun before the job fails (a dead rank).
    threads: CPU threads for PyTorch; 0 = PyTorch's default.
    channels_last: NHWC memory layout (faster convolutions on CPU).
    prefetch: batches prepared ahead in a background thread while the current step runs
        (0 = each batch prepared when the step needs it); the run is the same either way.
        Unset: 2 on a GPU, 0 on a CPU, where the thread would only compete with the step for
        the same cores (measured: 23 against 26 images/s on 2 cores, docs/speed.md).
    freeze_norm: batch-norm layers keep the starting model's statistics (evaluation mode) while
        the rest trains: a fine-tune's few slices are too few to re-estimate them.
    background_scoring: score validations in a background thread while training goes on (the
        best weights and the validation step's checkpoint are written when the scores arrive;
        the run and its report are the same). Unset: on, except under torchrun. On 2 CPU cores
        the main job's validations took 8.1 s instead of 10.1 s of its 3.5 minutes.
    """

    steps: int = 600
    batch_size: int = 16
    tile: int = 388
    lr: float = 1e-4
    weight_decay: float = 5e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    loss: str = "ce"
    membrane_weight: float = 1.0
    skeleton_weight: float = 0.0
    precision: str = "auto"
    loss_scale: float = 1024.0
    seed: int = 1
    val_every: int = 100
    select_by: str = "last"
    checkpoint_every: int = 0
    keep: int = 10
    log_every: int = 10
    device: str = "auto"
    init: str | None = None
    dist_timeout: float = 300.0
    ema: float = 0.0
    threads: int = 0
    channels_last: bool = True
    prefetch: int | None = None
    background_scoring: bool | None = None
    freeze_norm: bool = False

    def validate(self) -> None:
        ConfigError.check([
            (self.steps >= 1, "train.steps must be at least 1"),
            (self.batch_size >= 1, "train.batch_size must be at least 1"),
            (self.tile >= 1, "train.tile must be positive"),
            (0 < self.lr < math.inf, "train.lr must be a positive number"),
            (0 <= self.weight_decay < math.inf, "train.weight_decay must be a non-negative number"),
            (self.schedule in ("constant", "cosine"), "train.schedule must be 'constant' or 'cosine'"),
            (self.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
            (0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio must be in [0, 1]"),
            (self.loss in ("ce", "ce+dice"), "train.loss must be 'ce' or 'ce+dice'"),
            (0 < self.membrane_weight < math.inf, f"train.membrane_weight must be a positive number, got {self.membrane_weight}"),
            (0 <= self.skeleton_weight < math.inf, f"train.skeleton_weight must be a number >= 0, got {self.skeleton_weight}"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision must be auto/fp32/bf16/fp16"),
            (0 < self.loss_scale < math.inf, "train.loss_scale must be a positive number"),
            (self.keep >= 1, "train.keep must be at least 1"),
            (self.log_every >= 1, "train.log_every must be at least 1"),
            (0.0 <= self.ema < 1.0, "train.ema must be in [0, 1)"),
            (self.select_by in SELECT_BY, f"train.select_by must be one of {', '.join(SELECT_BY)}"),
            (self.val_every >= 0 and self.checkpoint_every >= 0, "train.val_every/checkpoint_every must be >= 0"),
            (self.dist_timeout > 0, "train.dist_timeout must be positive"),
            (self.threads >= 0, "train.threads must be >= 0"),
            (self.prefetch is None or self.prefetch >= 0, "train.prefetch must be >= 0"),
        ])


@dataclass
class PredictConfig:
    """Args:
    tile: output side of a prediction tile.
    overlap: share of a tile its neighbour overlaps.
    batch_size: tiles per forward pass on a GPU (a CPU takes one at a time: faster, same values).
    blend: 'gaussian' or 'uniform'.
    margin: mirrored context dropped around tiles of same-padded nets.
    tta: average over the 8 flips and 90-degree turns (8x the time; smoother boundaries); an
        affinity model's offsets are turned with the image.
    smooth: std in pixels of a Gaussian blur of the probability map (0 = none, the lab's).
    close_gaps: close cell walls whose mean membrane probability along a border exceeds this,
        gaps included (0 = off, the lab's; see postprocess.close_gaps_in_place).
    pixel_size: the images' pixel size in nanometres (``--pixel-size``); unset: from their
        metadata (ImageJ or OME TIFF), where they have one. Where it differs from the model's
        (``data.pixel_size`` of its run) by more than 1 %, images are predicted at the model's
        pixel size and the results resized back (cells: segmented there, then resized).
    adapt_norm: re-estimate the model's batch-norm statistics on the images predicted, weights
        untouched (``--adapt-norm``; test-time adaptation to another microscope, infer/adapt.py).
    """

    tile: int = 388
    overlap: float = 0.0
    batch_size: int = 4
    blend: str = "gaussian"
    margin: int = 32
    tta: bool = False
    smooth: float = 0.0
    close_gaps: float = 0.0
    pixel_size: float | None = None
    adapt_norm: bool = False

    def tiling(self, precision: str) -> dict:
        """The keyword arguments of ``tiling.predict_region`` (and the TTA variants) these settings give."""
        return dict(tile=self.tile, overlap=self.overlap, batch_size=self.batch_size, blend=self.blend,
                    margin=self.margin, precision=precision)

    def validate(self) -> PredictConfig:
        """Raise ConfigError on a bad setting (shared by config files and the CLI's flags)."""
        checks = [
            (self.tile >= 1, f"predict.tile (--tile) must be positive, got {self.tile}"),
            (self.blend in ("gaussian", "uniform"), "predict.blend must be 'gaussian' or 'uniform'"),
            (0.0 <= self.overlap < 1.0, f"predict.overlap (--overlap) must be in [0, 1), got {self.overlap}"),
            (self.batch_size >= 1, f"predict.batch_size (--batch-size) must be at least 1, got {self.batch_size}"),
            (0.0 <= self.smooth < 50.0, f"predict.smooth (--smooth) must be a blur std in pixels in [0, 50), got {self.smooth}"),
            (self.pixel_size is None or is_microscope_pixel(self.pixel_size),
             f"predict.pixel_size (--pixel-size) must be a microscope's pixel size in 0.1 .. 1e6 nm (1 mm), got {self.pixel_size}"),
            (0.0 <= self.close_gaps < 1.0,
             f"predict.close_gaps (--close-gaps) must be a membrane probability in [0, 1) (0 = off), got {self.close_gaps}"),
        ]
        ConfigError.check(checks)
        return self


@dataclass
class Config:
    out_dir: str = "runs/isbi"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)

    def validate(self) -> "Config":
        """Each section checks itself; a bad value is a ConfigError naming its key."""
        for section in (self.data, self.model, self.augment, self.train, self.predict, self.storage, self.segment):
            section.validate()
        if self.affinity_head:
            ConfigError.check([
                (not self.train.skeleton_weight, "train.skeleton_weight is the membrane head's; set it to 0 with "
                                                  "model.head=affinities"),
                (not self.predict.smooth and not self.predict.close_gaps,
                 "predict.smooth and predict.close_gaps post-process the membrane head's map; set them to 0 with "
                 "model.head=affinities (its cells come from the mutex watershed)"),
            ])
        return self

    def chosen_by(self) -> str:
        """How the scored weights were chosen, as every report states it beside their figures."""
        t, d = self.train, self.data
        if t.select_by == "last":
            return "the last step; the scored slices chose nothing"
        if d.inner_val:
            return (f"best {t.select_by} of the validations on {d.inner_val} training slices set aside "
                    f"(data.inner_val); the scored slices chose nothing")
        return (f"best {t.select_by} of the validations on the scored slices themselves, so optimistic "
                f"(train.select_by=last or data.inner_val=K choose without them)")

    @property
    def affinity_head(self) -> bool:
        head = self.model.head or PRESETS[self.model.preset]().head
        return head == "affinities"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to a field's type (YAML reads '1e-4' as a string, for instance)."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{key}: may not be null")
    if args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def _fill(obj: Any, values: dict, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown setting {full!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then ``section.key=value`` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        try:
            _fill(cfg, values, "")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return with_overrides(cfg, overrides or [])


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied (in place) and checked."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _fill(cfg, nested, "")
    return cfg.validate()


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(values: dict) -> Config:
    cfg = Config()
    _fill(cfg, values, "")
    return cfg


def run_settings(checkpoint: Checkpoint) -> Config:
    """The settings of the run that wrote ``checkpoint``, defaults where it records none (a
    MindSpore file, weights of another tool); the network comes from the file itself."""
    if checkpoint.run is None:
        return Config()
    return config_from_dict({k: v for k, v in checkpoint.run.items() if k not in ("model_resolved", "intensity")})


def data_url_overrides(data_url: str) -> list[str]:
    """The lab's cloud-job layout: a folder or prefix (``--data_url``) holding train-volume.tif,
    train-labels.tif and test-volume.tif, as the settings that name them."""
    root = str(data_url).rstrip("/")
    return [f"data.images={root}/train-volume.tif", f"data.labels={root}/train-labels.tif",
            f"data.test_images={root}/test-volume.tif"]


def with_absolute_paths(cfg: Config) -> Config:
    """``cfg`` with its local data and init paths made absolute: a run's config.yaml and its
    checkpoints then name the same files wherever they are read from (evaluate, --resume)."""
    def absolute(path: str | None) -> str | None:
        if path is None or "://" in str(path) or names_a_model(path):
            return path  # a URL, or a bundled model's name
        return os.path.abspath(os.path.expanduser(path))

    data = dataclasses.replace(cfg.data, images=absolute(cfg.data.images), labels=absolute(cfg.data.labels),
                               test_images=absolute(cfg.data.test_images))
    return dataclasses.replace(cfg, data=data, train=dataclasses.replace(cfg.train, init=absolute(cfg.train.init)))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
