"""The ``unet`` command: train, evaluate, predict, and run (all three, the main job)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from . import __version__

EPILOG = """Settings come from a YAML file (-c) and KEY=VALUE overrides, e.g.
  unet train -c configs/isbi-cpu.yaml train.steps=200 out_dir=runs/try
Sections: data, model, augment, train, predict, segment, storage (see configs/*.yaml for every key)."""


# Options of an OME-Zarr output only, and their defaults (given with another output they are refused).
BLOCKWISE_DEFAULTS = MappingProxyType({"block": 4096, "chunk": 1024, "dtype": "uint8", "levels": 1, "scheduler": None, "workers": 1})
OUTPUT_FORMATS = ("tiff", "hdf5", "zarr", "folder")


def _path_or_url(text: str) -> Path | str:
    """A local path, or an object-store URL (s3://bucket/key, ...) kept as written."""
    return text if "://" in text else Path(text)


def _add_common(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    p.add_argument("-c", "--config", type=Path, help="YAML config file (defaults: the lab's settings)")
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a setting, e.g. train.steps=100")


def _add_inference(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="'auto' (CUDA, else Apple's MPS, else the CPU), 'cpu', 'cuda[:N]' or 'mps' (default: auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision; auto = fp16 on CUDA, bf16 on a CPU with native bf16 (AMX or AVX512-BF16), "
                        "else fp32 (default: auto)")
    p.add_argument("--tile", type=int, help="output tile side for overlap-tile prediction (default: the run's predict.tile)")
    p.add_argument("--overlap", type=float, help="share of a tile its neighbour overlaps, in [0, 1) (default: the run's)")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass; bounds memory (default: the run's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the 8 flips/turns of each image (8x slower; default: the run's predict.tta)")
    p.add_argument("--smooth", type=float, metavar="SIGMA",
                   help="Gaussian blur of the probability map, std in pixels; 0 = none (default: the run's predict.smooth)")
    p.add_argument("--close-gaps", type=float, metavar="P",
                   help="close each cell wall whose mean membrane probability exceeds P along its whole length, "
                        "gaps included; 0 = off (default: the run's predict.close_gaps)")
    p.add_argument("--channel", type=int, help="channel to read from multi-channel images, from 0 (default: the run's "
                   "data.channel)")
    p.add_argument("--pixel-size", type=float, metavar="NM",
                   help="the images' pixel size in nm (default: from their metadata); images whose pixel size differs "
                   "from the model's are predicted at the model's and resized back")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "--train_url", dest="out", metavar="DIR_OR_URL",
                   help="output folder or object-store prefix, e.g. s3://bucket/output (same as out_dir=...; "
                   "--train_url as the lab's job names it)")
    p.add_argument("--data_url", metavar="DIR_OR_URL",
                   help="a folder or object-store prefix holding the lab's train-volume.tif, train-labels.tif and "
                   "test-volume.tif (sets data.images, data.labels and data.test_images)")


def _add_run_folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped run in the output folder from its newest checkpoint, with the run's own "
                        "saved settings (config.yaml) unless -c is given; KEY=VALUE still overrides")
    p.add_argument("--resume-from", type=_path_or_url, metavar="CHECKPOINT", help="continue from this checkpoint instead")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the output folder (its own files are removed, nothing else); "
                        "without it a folder that is not empty is refused")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet", description="U-Net segmentation of electron-microscopy images (ISBI 2012 and alike).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_command(sub)
    _add_evaluate_command(sub)
    _add_predict_command(sub)
    _add_score_command(sub)
    _add_run_command(sub)
    _add_cv_command(sub)
    _add_import_mindspore_command(sub)
    _add_export_command(sub)
    _add_presets_command(sub)
    _add_models_command(sub)
    for name, command in sub.choices.items():  # -q everywhere: no progress bars, or no output where there are none
        if not any("--quiet" in action.option_strings for action in command._actions):
            command.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return parser


def _add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a model", description="Train a U-Net on random native-resolution tiles of the "
                       "training fold, validating on the held-out fold (data.train_ratio=1: on every slice, validating "
                       "none), or with --from fine-tune a trained model on your own labelled slices.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    _add_out(p)
    _add_run_folder_options(p)
    p.add_argument("--from", dest="start", metavar="MODEL",
                   help="fine-tune MODEL (a bundled model's name, or a checkpoint) on data.images/data.labels: its own "
                   "settings (network, augmentation, prediction, cells, input scaling) with a short run's training "
                   "(train.steps=50, train.lr=1e-4, constant rate, every given slice trains); KEY=VALUE changes any")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_evaluate_command(sub) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on labelled images",
                       description="Score a checkpoint: the lab's dice (soft, both channels, per slice, averaged), "
                       "membrane dice and IoU at 0.5, pixel error, and the ISBI challenge's V_rand and V_info after "
                       "border thinning (best of thresholds 0.0..1.0, with split and merge parts). By default on the "
                       "validation fold of the run that wrote the checkpoint; with --images/--labels on all of those.")
    p.add_argument("checkpoint", type=_path_or_url, nargs="+",
                   help="best.safetensors / last.safetensors, a checkpoints/step_N.pt, the lab's MindSpore .ckpt, or a bundled "
                   "model's name (unet models); "
                   "several: score the mean of their probabilities (an ensemble; settings and fold from the first)")
    p.add_argument("--images", help="labelled images to score (stack or folder); default: the run's validation fold")
    p.add_argument("--labels", help="their masks")
    p.add_argument("--foreground", type=int, help="mask value of the foreground class (default: the run's, ISBI 255)")
    p.add_argument("--mask-threshold", type=float, metavar="T",
                   help="binarise masks that are not two-valued at T (default: the run's data.mask_threshold)")
    p.add_argument("--fold", type=int, help="score this fold of the run's data instead of the run's own fold")
    p.add_argument("--json", type=_path_or_url, help="write scores here (default: eval.json beside the checkpoint)")
    _add_inference(p)


def _add_predict_command(sub) -> None:
    p = sub.add_parser("predict", help="segment images of any size",
                       description="Segment a stack, an image or a folder with overlap-tile prediction and mirror "
                       "padding. Writes a float32 probability TIFF (1 = cell interior, 0 = membrane, the ISBI convention) as an "
                       "ImageJ stack (axes ZYX) with the input's pixel size and each slice's source file as its label.")
    p.add_argument("checkpoint", type=_path_or_url, nargs="+",
                   help="best.safetensors / last.safetensors, a checkpoints/step_N.pt, the lab's MindSpore .ckpt, or a bundled "
                   "model's name (unet models); "
                   "several: write the mean of their probabilities (an ensemble; settings from the first)")
    p.add_argument("input", help="a (multi-page) TIFF or PNG, or a folder of them, or a volume: data.zarr (Zarr, "
                   "OME-Zarr), data.h5:/path/in/file; any of them may be an s3:// URL except volumes")
    p.add_argument("-o", "--output", type=_path_or_url, required=True,
                   help="a .tif: one probability stack for images of one size; a folder: one TIFF per image, any sizes; "
                   "file.h5[:/dataset]: an HDF5 dataset; a .zarr (e.g. out.ome.zarr): an OME-Zarr image, predicted "
                   "block by block (options below)")
    p.add_argument("--masks", type=_path_or_url, help="also write PNG masks into this folder: 255 = cell interior (probability "
                   "above 0.5), 0 = membrane, as the ISBI labels")
    p.add_argument("--overlays", type=_path_or_url, help="also write PNG overlays (membrane in red) into this folder")
    p.add_argument("--segment", nargs="?", const="", metavar="CELLS", type=str,
                   help="also write the cells, an instance label image (uint32, each id one cell): the mutex watershed "
                   "of an affinity model's affinities, or the seeded watershed of a membrane model's map. CELLS: a .tif "
                   "or an OME-Zarr (.zarr); a folder where -o is one; default: beside -o as NAME-cells.tif")
    p.add_argument("--min-size", type=int, metavar="PX", help="with --segment: merge cells smaller than this into "
                   "their neighbours (default: the run's segment.min_size, 50)")
    p.add_argument("--overwrite", action="store_true", help="replace an HDF5 dataset of the same name, or an OME-Zarr "
                   "output made by another model, input or settings (without it these are refused)")
    volumes = p.add_argument_group("volumes larger than memory (-o OUT.ome.zarr: predicted block by block on Dask)")
    volumes.add_argument("--block", type=int, help=f"block side in pixels, whole chunks; larger blocks recompute less of their border (default: {BLOCKWISE_DEFAULTS['block']})")
    volumes.add_argument("--chunk", type=int, help=f"output chunk side; chunks are 1 x N x N (default: {BLOCKWISE_DEFAULTS['chunk']})")
    volumes.add_argument("--dtype", choices=["uint8", "float16", "float32"],
                         help="probabilities as uint8 (x 255, the default), float16 or float32")
    volumes.add_argument("--levels", type=int, help="resolutions to write; more than 1 adds 2x-downsampled "
                         "levels for viewers (default: 1)")
    volumes.add_argument("--scheduler", metavar="ADDRESS", help="a dask.distributed scheduler (tcp://host:8786) to run "
                         "the blocks on; default: in this process")
    volumes.add_argument("--workers", type=int, help="threads of the in-process scheduler (default: 1)")
    volumes.add_argument("--axes", help="the input's axes where its metadata has none, e.g. zyx or czyx")
    _add_inference(p)


def _add_score_command(sub) -> None:
    p = sub.add_parser("score", help="score probability maps or a segmentation against labels (no model)",
                       description="Score maps made by any tool with the ISBI 2012 challenge's V_rand and V_info after "
                       "border thinning, computed exactly as the challenge's Fiji script computes them (thresholds 0.0..1.0 "
                       "in steps of 0.1, best of each). Prints the sweep, per-slice scores and the maxima.",
                       epilog="examples:\n"
                       "  unet score prob.tif train-labels.tif --fold 1         # prob.tif: the 6 slices of fold 1\n"
                       "  unet score prob.tif labels.tif --slices 4,6,7,9,18,19 --json scores.json\n"
                       "  unet score cells.tif labels.tif --segmentation      # a label image: each id a cell",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("maps", help="probability maps (TIFF stack, image or folder; float in [0, 1] or 8/16-bit, "
                   "1 = cell interior, the ISBI submission convention), or with --segmentation a label image")
    p.add_argument("labels", help="true masks (TIFF stack, image or folder), two-valued")
    p.add_argument("--foreground", type=int, default=255, help="mask value of the cell interior (default: 255, ISBI)")
    p.add_argument("--mask-threshold", type=float, metavar="T", help="binarise masks that are not two-valued at T")
    p.add_argument("--slices", help="score these label slices only, 0-based: '4,6,7' or '0-5'; MAPS holds either all "
                   "slices or just these, in the order given")
    p.add_argument("--fold", type=int, help="score the validation slices of this fold of the lab's split of LABELS "
                   "(fold 1: 4, 6, 7, 9, 18, 19); MAPS holds either all slices or just these, in ascending order")
    p.add_argument("--segmentation", action="store_true",
                   help="MAPS is a label image (integer ids, each a cell; 0 = boundary): thinned and scored once")
    p.add_argument("--json", type=_path_or_url, help="also write every number to this JSON file")


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="the main job: train, evaluate the fold, predict the test images",
                       description="Train, evaluate on the validation fold (the map and its cells) and predict "
                       "data.test_images (test-probabilities.tif, test-cells.tif); all outputs in out_dir.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    _add_out(p)
    _add_run_folder_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_cv_command(sub) -> None:
    p = sub.add_parser("cv", help="cross-validate: train and score several folds, write an HTML report",
                       description="Train and score each fold in OUT/fold{k}; write OUT/cv.json and OUT/report.html "
                       "(per-fold table with mean and spread, curves, and every validation slice with its errors); "
                       "then predict data.test_images with the mean of the folds' best models (OUT/test-probabilities.tif, "
                       "and its cells, OUT/test-cells.tif).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.add_argument("--folds", default="0,1,2,3,4", help="comma-separated folds (default: 0,1,2,3,4)")
    _add_out(p)
    p.add_argument("--resume", action="store_true", help="continue the cross-validation in the output folder: unfinished "
                   "folds from their newest checkpoints, finished ones kept (with the folds' saved config.yaml unless -c "
                   "is given)")
    p.add_argument("--overwrite", action="store_true", help="replace the folds' runs already in the output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_import_mindspore_command(sub) -> None:
    p = sub.add_parser("import-mindspore", help="convert the lab's MindSpore .ckpt into a project checkpoint",
                       description="Read a MindSpore checkpoint of the lab's unet_medical (no MindSpore needed), take the "
                       "widths from its tensor shapes, set the optimiser state aside, and write safetensors weights that "
                       "predict, evaluate and train (train.init=...) use. predict/evaluate also accept the .ckpt directly.")
    p.add_argument("checkpoint", type=_path_or_url, help="MindSpore .ckpt file")
    p.add_argument("output", type=_path_or_url, help=".safetensors file to write")


def _add_export_command(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX or a BioImage Model Zoo package",
                       description="ONNX (the default): opset 17+, dynamic batch, height and width; the input 'image' is "
                       "(N, C, H, W) mapped to [-1, 1] (2 * grey - 1), C = 1 (2k + 1 sections for a data.context=k model); "
                       "H and W must fit the network (any multiple of 16 for same-padded presets; 572, 588, ... for the "
                       "lab's valid one); the file's metadata say so. Needs: pip install onnx. --format bioimageio: a "
                       "BioImage Model Zoo package (.zip, format 0.5) with TorchScript, ONNX and state-dict weights, test "
                       "tensors and the input scaling, for ilastik, deepImageJ, napari and bioimageio.core. Needs: pip "
                       "install bioimageio.core.")
    p.add_argument("checkpoint", type=_path_or_url, help=".safetensors, .pt or MindSpore .ckpt")
    p.add_argument("output", type=_path_or_url, help=".onnx file (or .zip package) to write")
    p.add_argument("--format", choices=["onnx", "bioimageio"], default="onnx", help="what to write (default: onnx)")
    p.add_argument("--softmax", action="store_true", help="fold the softmax in: output class probabilities")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer (default: 17)")


def _add_presets_command(sub) -> None:
    sub.add_parser("presets", help="list the model presets")


def _add_models_command(sub) -> None:
    sub.add_parser("models", help="list the bundled trained models (their names work wherever a checkpoint does)",
                   description="The trained models that ship with the package: what each was trained on, its pixel "
                   "size, the data's terms, how it was made and its recipe's scores on held-out folds. A name works "
                   "wherever a checkpoint path does: unet predict isbi-cells img.tif -o p.tif --segment, "
                   "Segmenter('isbi-membranes'), train.init=isbi-membranes.")


def _config(args):
    """Settings from -c and KEY=VALUE; a resumed run without -c takes its own config.yaml (a
    run stopped before it started has none: then the defaults and KEY=VALUE)."""
    from .io import storage
    from .config import data_url_overrides, load_config
    from .errors import UsageError

    overrides = list(args.overrides)
    if getattr(args, "data_url", None):  # KEY=VALUE given beside it still wins
        overrides[:0] = data_url_overrides(args.data_url)
    if getattr(args, "out", None):
        overrides.append(f"out_dir={args.out}")
    if getattr(args, "start", None):
        return _fine_tune_config(args, overrides)
    if _resuming(args) and args.config is None:
        given = load_config(None, overrides)
        storage.use(given.storage)
        saved = _saved_config(str(given.out_dir).rstrip("/"), args)
        if saved:  # the folder is where it is now, whatever the saved config says
            return load_config(storage.local_copy(saved), [*overrides, f"out_dir={given.out_dir}"])
        if not args.overrides:  # a run stopped before it started has no config.yaml: its settings must be given
            raise UsageError(f"{given.out_dir}: no run to resume here (no config.yaml); give its folder with --out, "
                             "or its settings with -c or KEY=VALUE")
    cfg = load_config(args.config, overrides)
    storage.use(cfg.storage)
    return cfg


def _fine_tune_config(args, overrides: list[str]):
    from .errors import UsageError
    from .io import storage
    from .train.finetune import fine_tune_config

    if args.config is not None or _resuming(args):
        raise UsageError("--from starts a fine-tuning run from the model's own settings: give KEY=VALUE instead of -c; "
                         "to continue a stopped one, use --resume without --from")
    cfg = fine_tune_config(args.start, overrides)
    storage.use(cfg.storage)
    return cfg


def _saved_config(out_dir: str, args) -> str | None:
    """The config.yaml a resumed command continues with: the run's own; for cv, the first fold's
    (folds differ only in data.fold, which cv sets)."""
    from .io import storage

    candidates = [f"{out_dir}/config.yaml"]
    if args.command == "cv":
        candidates += [f"{out_dir}/fold{k.strip()}/config.yaml" for k in args.folds.split(",") if k.strip()]
    return next((c for c in candidates if storage.exists(c)), None)


def _resuming(args) -> str | bool:
    """What train() resumes from: a checkpoint path, True (the newest in the folder) or False."""
    if getattr(args, "resume_from", None):
        return str(args.resume_from)
    return bool(getattr(args, "resume", False))


# flag (as argparse names it) -> the setting it overrides; --batch-size sets predict.batch_size
INFERENCE_FLAGS = MappingProxyType({"tile": "predict.tile", "overlap": "predict.overlap", "batch_size": "predict.batch_size",
                                    "tta": "predict.tta", "smooth": "predict.smooth", "close_gaps": "predict.close_gaps",
                                    "min_size": "segment.min_size", "pixel_size": "predict.pixel_size"})


def _load_for_inference(args):
    """The checkpoints as a Predictor with the run's settings and --tile, --overlap, --min-size,
    ... applied as overrides, checked the same way as KEY=VALUE (a command without a flag leaves
    its setting alone); --channel likewise."""
    from .device import choose_precision, resolve_device
    from .infer.predictor import Predictor

    device = resolve_device(args.device)
    precision = choose_precision(args.precision, device)
    if not args.quiet:
        print(f"{device.type}, {precision}", file=sys.stderr, flush=True)
    flags = [f"{key}={getattr(args, flag)}" for flag, key in INFERENCE_FLAGS.items() if getattr(args, flag, None) is not None]
    if getattr(args, "channel", None) is not None:
        flags.append(f"data.channel={args.channel}")
    return Predictor.load(args.checkpoint, device, precision.precision, flags)


def cmd_evaluate(args) -> int:
    from .jobs import evaluate
    from .score.evaluate import format_table

    predictor = _load_for_inference(args)
    done = evaluate(predictor, args.images, args.labels, args.fold, args.foreground, args.mask_threshold, args.json,
                    progress=not args.quiet)
    if len(predictor.models) == 1:
        print(f"{predictor.paths[0]} (step {predictor.step}) on {done.data}, {predictor.precision}:")
    else:
        print(f"mean of {len(predictor.models)} models ({', '.join(map(str, predictor.paths))}) on {done.data}, "
              f"{predictor.precision}:")
    print(format_table(done.report))
    print(f"wrote {done.json}")
    return 0


def _print_segmented(segmented, shown_as: dict[str, str] | None = None) -> None:
    """What was written, each output named as the user gave it (a URL, not its local staging)."""
    from .io.storage import shown

    for line in segmented.written:
        for local, given in (shown_as or {}).items():
            line = line.replace(local, given) if local != given else line
        path, sep, rest = line.partition(": ")
        print(f"wrote {shown(path)}{sep}{rest}")
    print(f"predicted {segmented.count} {'slice' if segmented.count == 1 else 'slices'} in {segmented.seconds:.1f} s")


def _predict_outputs(args):
    """The addresses of -o, --segment, --masks and --overlays, checked against the input and each
    other before any model is loaded."""
    from .errors import UsageError
    from .io.address import parse_address
    from .io.writers import PROBABILITIES_DATASET, check_outputs

    output = parse_address(str(args.output), OUTPUT_FORMATS, "-o output")
    if output.format == "hdf5":
        output = output.with_member(PROBABILITIES_DATASET)
    given = [f"--{k}" for k in BLOCKWISE_DEFAULTS if getattr(args, k) is not None]
    if output.format != "zarr" and given:
        raise UsageError(f"{', '.join(given)}: for an OME-Zarr output only (-o NAME.ome.zarr); {args.output} is "
                         f"{'a folder' if output.is_folder else output.format.upper()}")
    for key, default in BLOCKWISE_DEFAULTS.items():
        setattr(args, key, default if getattr(args, key) is None else getattr(args, key))
    cells = _cells_address(args, output)
    masks, overlays = (parse_address(str(f), ("folder",), option) if f else None
                       for f, option in ((args.masks, "--masks folder"), (args.overlays, "--overlays folder")))
    if output.format != "zarr":
        check_outputs([_input_address(args.input)], [("-o", output), ("--segment", cells), ("--masks", masks),
                                                     ("--overlays", overlays)])
    return output, cells, masks, overlays


def _input_address(text: str):
    from .errors import UsageError
    from .io.address import Address, parse_address

    try:
        return parse_address(text, what="input")
    except UsageError:  # an image format only Pillow knows (.jpg, .bmp, ...): a plain file
        return Address(text, text, "", "file")


def cmd_predict(args) -> int:
    import dataclasses

    from .io.storage import staged_output

    output, cells, masks, overlays = _predict_outputs(args)
    predictor = _load_for_inference(args)
    if output.format == "zarr":
        return _predict_blockwise(args, predictor, output, cells)
    # an HDF5 output is added into the file that is there, so a store's copy starts from it
    with (staged_output(output.location, output.format == "hdf5") as out_local,
          staged_output(masks and masks.location) as masks_local,
          staged_output(overlays and overlays.location) as overlays_local,
          staged_output(cells and cells.location, cells is not None and cells.format == "hdf5") as cells_local):
        local_cells = dataclasses.replace(cells, location=str(cells_local)) if cells else None
        segmented = predictor.write(args.input, dataclasses.replace(output, location=str(out_local)), local_cells,
                                    masks_local, overlays_local, overwrite=args.overwrite, progress=not args.quiet)
    staged = ((out_local, output), (masks_local, masks), (overlays_local, overlays), (cells_local, cells))
    _print_segmented(segmented, {str(local): address.location for local, address in staged if address is not None})
    return 0


def _cells_address(args, output):
    """Where --segment writes the cells: as given; by default beside -o as NAME-cells.tif (a
    folder NAME-cells for a folder of outputs, the dataset 'cells' of an HDF5 output); None
    without --segment."""
    from .errors import UsageError
    from .io.address import Address, parse_address

    if args.segment is None:
        if args.min_size is not None:
            raise UsageError("--min-size goes with --segment")
        return None
    if args.segment:
        return parse_address(args.segment, OUTPUT_FORMATS, "--segment output")
    if output.format == "hdf5":
        return Address(output.given, output.location, "cells", "hdf5")
    if output.format == "tiff":
        stem = output.location[: -len(os.path.splitext(output.location)[1])]
        return parse_address(f"{stem}-cells.tif", OUTPUT_FORMATS, "--segment output")
    return parse_address(f"{output.location}-cells", OUTPUT_FORMATS, "--segment output")


def _predict_blockwise(args, predictor, output, cells) -> int:
    from .infer.blockwise import predict_to_ome_zarr
    from .errors import UsageError

    if args.masks or args.overlays or output.is_url:
        raise UsageError(f"{args.output}: an OME-Zarr output is written to a local folder, without --masks or --overlays")
    if cells is not None or predictor.models[0].cfg.offsets:
        raise UsageError(f"{args.output}: volumes predicted block by block give the membrane head's probabilities only; "
                         "for cells (--segment, or an affinity model) write a .tif stack with -o and --segment CELLS.zarr")
    result = predict_to_ome_zarr(predictor.paths, str(args.input), output.path, predictor.settings, predictor.precision,
                                 device=args.device, block=args.block, chunk=args.chunk, dtype=args.dtype,
                                 levels=args.levels, scheduler=args.scheduler, workers=args.workers,
                                 channel=predictor.channel, axes=args.axes, progress=not args.quiet,
                                 overwrite=args.overwrite)
    n, h, w = result.shape
    done = result.blocks - result.skipped
    speed = f", {n * h * w / 1e6 / max(result.seconds, 1e-9):.2f} MP/s" if done == result.blocks else ""
    print(f"wrote {args.output}: {n} x {h} x {w} {args.dtype} probabilities (1 = cell interior), OME-Zarr, "
          f"{done} of {result.blocks} blocks computed ({result.skipped} finished before), {result.seconds:.1f} s{speed}")
    return 0


def _slice_list(spec: str) -> list[int]:
    from .errors import UsageError

    out: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise UsageError(f"--slices must list 0-based slice numbers such as '4,6,7' or '0-5', got {spec!r}") from None
    if not out:
        raise UsageError("--slices names no slice")
    twice = sorted({i for i in out if out.count(i) > 1})
    if twice:
        raise UsageError(f"--slices names slice {twice[0]} more than once; name each slice once")
    return out


def cmd_score(args) -> int:
    from .errors import UsageError
    from .jobs import score
    from .score.evaluate import format_sweep

    if args.slices and args.fold is not None:
        raise UsageError("--slices and --fold both choose slices; give one")
    done = score(args.maps, args.labels, args.foreground, args.mask_threshold, args.segmentation,
                 _slice_list(args.slices) if args.slices else None, args.fold, args.json)
    print(f"{args.maps} against {args.labels} ({len(done.names)} slices, {done.seconds:.2f} s):")
    print(format_sweep(done.result, done.names))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def cmd_train(args) -> int:
    from .io.storage import is_url
    from .train.loop import train

    cfg = _config(args)
    trained = train(cfg, resume=_resuming(args), progress=not args.quiet, overwrite=args.overwrite)
    if trained is not None:  # rank 0
        name = trained.best_path.name
        where = f"{str(cfg.out_dir).rstrip('/')}/{name}" if is_url(cfg.out_dir) else trained.best_path
        if trained.report is None:
            print(f"weights: {where} (step {trained.step}, trained on every slice; nothing validated)")
        else:
            print(f"weights: {where} (step {trained.step}: {trained.chosen_by})")
    return 0


def _single_process(command: str) -> None:
    from .errors import UsageError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"'{command}' runs in one process; under torchrun use 'train', then 'evaluate' and 'predict'")


def cmd_run(args) -> int:
    from .io.storage import is_url, shown
    from .jobs import run
    from .score.evaluate import format_table

    _single_process("run")
    cfg = _config(args)
    done = run(cfg, resume=_resuming(args), overwrite=args.overwrite, progress=not args.quiet)
    print(f"\nfold {cfg.data.fold}, step {done.fold.step} ({done.fold.chosen_by}), {done.fold.precision}:")
    print(format_table(done.fold.report))
    if done.test is not None:
        _print_segmented(done.test)
    print(f"wrote {shown(done.eval_json)} and {shown(done.report_html)}; total {done.seconds['total']:.0f} s")
    if is_url(cfg.out_dir):
        print(f"uploaded the run to {cfg.out_dir}")
    return 0


def cmd_cv(args) -> int:
    from .errors import UsageError
    from .io.storage import is_url, shown
    from .jobs import cross_validate

    _single_process("cv")
    cfg = _config(args)
    try:
        folds = [int(k) for k in args.folds.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--folds must be comma-separated integers, got {args.folds!r}") from None
    if not folds or min(folds) < 0:
        raise UsageError("--folds must name at least one fold >= 0")
    done = cross_validate(cfg, folds, progress=not args.quiet, overwrite=args.overwrite, resume=args.resume)
    for r in done.folds:
        m = r.report.mean
        print(f"fold {r.fold}: lab dice {m['lab_dice']:.4f}  V_rand {m['v_rand']:.4f}  V_info {m['v_info']:.4f}  "
              f"cells: V_rand {m['cells_v_rand']:.4f}  V_info {m['cells_v_info']:.4f}")
    print(f"wrote {shown(done.cv_json)} and {shown(done.report_html)}")
    if done.test is not None:
        _print_segmented(done.test)
    if is_url(cfg.out_dir):
        print(f"uploaded the cross-validation to {cfg.out_dir}")
    return 0


def cmd_import_mindspore(args) -> int:
    from .model.checkpoint import import_mindspore, save_weights
    from .errors import UsageError
    from .io.storage import staged_output

    if PurePosixPath(str(args.output)).suffix != ".safetensors":
        raise UsageError(f"{args.output}: output must be a .safetensors file")
    model, skipped = import_mindspore(args.checkpoint)
    with staged_output(args.output) as local:
        save_weights(local, model, model.cfg, {"source": str(args.checkpoint)})
    n = sum(p.numel() for p in model.parameters())
    print(f"imported {args.checkpoint}: unet_medical, width {model.cfg.width}, depth {model.cfg.depth}, {n:,d} parameters")
    print(f"set aside {len(skipped)} optimiser entries ({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''})")
    print(f"wrote {args.output}")
    return 0


def cmd_export(args) -> int:
    from .model.checkpoint import load
    from .errors import UsageError
    from .model.export import export_onnx
    from .io.storage import staged_output

    if args.format == "bioimageio":
        from .model.bioimageio import export_bioimageio

        checkpoint = load(args.checkpoint)
        with staged_output(args.output) as local:
            export_bioimageio(checkpoint, local)
        print(f"wrote {args.output} (BioImage Model Zoo package, format 0.5: TorchScript, ONNX and state-dict weights)")
        return 0
    if PurePosixPath(str(args.output)).suffix != ".onnx":
        raise UsageError(f"{args.output}: output must be a .onnx file")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install onnx (or the project's [onnx] extra)") from None
    checkpoint = load(args.checkpoint)
    with staged_output(args.output) as local:
        export_onnx(checkpoint.network, local, opset=args.opset, softmax=args.softmax, intensity=checkpoint.intensity)
    print(f"wrote {args.output} (opset {args.opset}, {'probabilities' if args.softmax else 'logits'}, dynamic batch/height/width)")
    return 0


def cmd_presets(args) -> int:
    from .model.unet import PRESETS, count_parameters, create_model

    for name, fn in PRESETS.items():
        model = create_model(name)
        print(f"{name:<14} {count_parameters(model):>12,d} parameters  {(fn.__doc__ or '').strip()}")
    return 0


def cmd_models(args) -> int:
    from .model.bundled import bundled_models, describe

    models = bundled_models()
    if not models:
        print("no bundled models in this installation")
    print("\n\n".join(describe(m) for m in models.values()))
    return 0


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to sys.stderr as it is when a line is written (not as it was when
    the handler was made): one ``main`` after another in a process, each with its own stderr."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_warnings() -> None:
    """The package's warnings (skipped files, suspicious masks) as one line each on stderr."""
    import logging

    logger = logging.getLogger("emunet")
    if not any(getattr(h, "_emunet", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("unet: warning: %(message)s"))
        handler._emunet = True
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


QUIET_MEANS_SILENT = ("score", "import-mindspore", "export", "presets", "models")  # commands with no progress to hide

COMMANDS = MappingProxyType({"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "score": cmd_score, "run": cmd_run, "cv": cmd_cv,
                             "import-mindspore": cmd_import_mindspore, "export": cmd_export,
                             "presets": cmd_presets, "models": cmd_models})


def main(argv: list[str] | None = None) -> int:
    import contextvars

    from .errors import EmunetError

    args = build_parser().parse_args(argv)
    _show_warnings()
    try:
        if args.quiet and args.command in QUIET_MEANS_SILENT:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                return contextvars.copy_context().run(COMMANDS[args.command], args)
        # each command in its own context: the storage settings it takes end with it
        return contextvars.copy_context().run(COMMANDS[args.command], args)
    except EmunetError as exc:
        print(f"unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"unet {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # TrainingInterrupted says which checkpoint holds the last whole step
        print(f"unet {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
