"""The ``unet`` command's options: one parser, a sub-parser per command, each flag's help."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import MappingProxyType

from .. import __version__
from ..infer.blocks import BLOCK, SEGMENT_BLOCK

EPILOG = """Settings come from a YAML file (-c) and KEY=VALUE overrides, e.g.
  unet train -c configs/isbi-cpu.yaml train.steps=200 out_dir=runs/try
Sections: data, model, augment, train, predict, segment, storage (see configs/*.yaml for every key)."""


# Options of an OME-Zarr output only, and their defaults (given with another output they are refused).
# block and workers: None, chosen by the blockwise prediction (infer/blocks.py)
BLOCKWISE_DEFAULTS = MappingProxyType({"block": None, "chunk": 1024, "dtype": "uint8", "levels": 1, "scheduler": None, "workers": None})
OUTPUT_FORMATS = ("tiff", "hdf5", "zarr", "folder")
QUIET_MEANS_SILENT = ("score", "import-mindspore", "export", "presets", "models")  # commands with no progress to hide


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
    p.add_argument("--batch-size", type=int, help="tiles per forward pass on a GPU; bounds memory (default: the run's; a CPU takes one at a time)")
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
    p.add_argument("--adapt-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate the model's batch-norm statistics on these images first (weights untouched): "
                        "for a stack of another microscope than the model's; a few seconds; a volume block by block is "
                        "adapted once, to windows of up to 8 of its sections (default: the run's predict.adapt_norm, off)")


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
        command.add_argument("-q", "--quiet", action="store_true",
                             help="print nothing but errors" if name in QUIET_MEANS_SILENT else "no progress bars")
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
                   "OME-Zarr), data.h5:/path/in/file; any of them may be an s3:// URL (a Zarr volume there is read chunk by "
                   "chunk; predicted into OME-Zarr, an HDF5 or TIFF volume must be local)")
    p.add_argument("-o", "--output", type=_path_or_url, required=True,
                   help="a .tif: one probability stack for images of one size; a folder: one TIFF per image, any sizes; "
                   "file.h5[:/dataset]: an HDF5 dataset; a .zarr (e.g. out.ome.zarr): an OME-Zarr image, predicted "
                   "block by block (options below), locally or to an s3:// URL")
    p.add_argument("--masks", type=_path_or_url, help="also write PNG masks into this folder: 255 = cell interior (probability "
                   "above 0.5), 0 = membrane, as the ISBI labels")
    p.add_argument("--overlays", type=_path_or_url, help="also write PNG overlays (membrane in red) into this folder")
    p.add_argument("--segment", nargs="?", const="", metavar="CELLS", type=str,
                   help="also write the cells, an instance label image (uint32, each id one cell of its section; ids start at 1 on every section unless --link-sections): the mutex watershed "
                   "of an affinity model's affinities, or the seeded watershed of a membrane model's map. CELLS: a .tif "
                   "or an OME-Zarr (.zarr); a folder where -o is one; default: beside -o as NAME-cells.tif, and for -o OUT.ome.zarr "
                   "the volume's own labels OUT.ome.zarr/labels/cells, cut block by block and stitched at the seams (ids unique in the volume)")
    p.add_argument("--min-size", type=int, metavar="PX", help="with --segment: merge cells smaller than this into "
                   "their neighbours (default: the run's segment.min_size, 50)")
    p.add_argument("--link-sections", action="store_const", const=True,
                   help="with --segment: cells in 3-D: join each section's cells to the next section's by overlap (each "
                   "cell and its best match, IoU at least segment.link_iou, 0.3), so that one id is one object across "
                   "sections (serial sections: ISBI, ssTEM)")
    p.add_argument("--overwrite", action="store_true", help="replace an HDF5 dataset of the same name, or an OME-Zarr "
                   "output made by another model, input or settings (without it these are refused)")
    volumes = p.add_argument_group("volumes larger than memory (-o OUT.ome.zarr: predicted block by block on Dask)")
    volumes.add_argument("--block", type=int, help=f"block side in pixels, whole chunks; larger blocks recompute less of their border, smaller ones "
                         f"take less memory (default: {BLOCK}, with --segment {SEGMENT_BLOCK}, a multiple of 8)")
    volumes.add_argument("--chunk", type=int, help=f"output chunk side; chunks are 1 x N x N (default: {BLOCKWISE_DEFAULTS['chunk']})")
    volumes.add_argument("--dtype", choices=["uint8", "float16", "float32"],
                         help="probabilities as uint8 (x 255, the default), float16 or float32")
    volumes.add_argument("--levels", type=int, help="resolutions to write; more than 1 adds 2x-downsampled "
                         "levels for viewers (default: 1)")
    volumes.add_argument("--scheduler", metavar="ADDRESS", help="a dask.distributed scheduler (tcp://host:8786) to run "
                         "the blocks on; default: in this process")
    volumes.add_argument("--workers", type=int, help="threads of the in-process scheduler (default: 2 where the machine "
                         "has 2 cores or more: one predicts while another runs a block's watersheds; 1 for an affinity "
                         "model's cells, whose mutex watershed takes GBs per block)")
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
