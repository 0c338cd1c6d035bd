"""What each ``unet`` command does with its parsed arguments: call the jobs or the Predictor,
print what they did."""

from __future__ import annotations

import os
import sys
from pathlib import PurePosixPath
from types import MappingProxyType

from ..infer.blocks import default_threads
from .options import BLOCKWISE_DEFAULTS, OUTPUT_FORMATS
from .settings import _config, _resuming

# flag (as argparse names it) -> the setting it overrides; --batch-size sets predict.batch_size
INFERENCE_FLAGS = MappingProxyType({"tile": "predict.tile", "overlap": "predict.overlap", "batch_size": "predict.batch_size",
                                    "tta": "predict.tta", "smooth": "predict.smooth", "close_gaps": "predict.close_gaps",
                                    "min_size": "segment.min_size", "link_sections": "segment.link_sections",
                                    "pixel_size": "predict.pixel_size", "adapt_norm": "predict.adapt_norm"})


def _load_for_inference(args):
    """The checkpoints as a Predictor with the run's settings and --tile, --overlap, --min-size,
    ... applied as overrides, checked the same way as KEY=VALUE (a command without a flag leaves
    its setting alone); --channel likewise."""
    from ..device import choose_precision, keep_freed_memory, resolve_device
    from ..infer.predictor import Predictor

    device = resolve_device(args.device)
    precision = choose_precision(args.precision, device)
    if device.type == "cpu":  # the command owns its process: keep the tiles' freed memory (see keep_freed_memory)
        keep_freed_memory()
    if not args.quiet:
        print(f"{device.type}, {precision}", file=sys.stderr, flush=True)
    flags = [f"{key}={getattr(args, flag)}" for flag, key in INFERENCE_FLAGS.items() if getattr(args, flag, None) is not None]
    if getattr(args, "channel", None) is not None:
        flags.append(f"data.channel={args.channel}")
    return Predictor.load(args.checkpoint, device, precision.precision, flags)


def cmd_evaluate(args) -> int:
    from ..jobs import evaluate
    from ..score.evaluate import format_table

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
    from ..io.storage import shown

    for line in segmented.written:
        for local, given in (shown_as or {}).items():
            line = line.replace(local, given) if local != given else line
        path, sep, rest = line.partition(": ")
        print(f"wrote {shown(path)}{sep}{rest}")
    print(f"predicted {segmented.count} {'slice' if segmented.count == 1 else 'slices'} in {segmented.seconds:.1f} s")


def _predict_outputs(args):
    """The addresses of -o, --segment, --masks and --overlays, checked against the input and each
    other before any model is loaded."""
    from ..errors import UsageError
    from ..io.address import parse_address
    from ..io.writers import PROBABILITIES_DATASET, check_outputs

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
    from ..errors import UsageError
    from ..io.address import Address, parse_address

    try:
        return parse_address(text, what="input")
    except UsageError:  # an image format only Pillow knows (.jpg, .bmp, ...): a plain file
        return Address(text, text, "", "file")


def cmd_predict(args) -> int:
    import dataclasses

    from ..io.storage import staged_output

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
    folder NAME-cells for a folder of outputs, the dataset 'cells' of an HDF5 output, the labels
    'cells' of an OME-Zarr output); None without --segment."""
    from ..errors import UsageError
    from ..io.address import Address, parse_address

    if args.segment is None:
        for flag in ("min_size", "link_sections"):
            if getattr(args, flag, None) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} goes with --segment")
        return None
    if output.format == "zarr" and not args.segment:  # a volume's cells go into its own NGFF labels
        return Address(f"{output.given}/labels/cells", f"{output.location}/labels/cells", "", "zarr")
    if args.segment:
        return parse_address(args.segment, OUTPUT_FORMATS, "--segment output")
    if output.format == "hdf5":
        return Address(output.given, output.location, "cells", "hdf5")
    if output.format == "tiff":
        stem = output.location[: -len(os.path.splitext(output.location)[1])]
        return parse_address(f"{stem}-cells.tif", OUTPUT_FORMATS, "--segment output")
    return parse_address(f"{output.location}-cells", OUTPUT_FORMATS, "--segment output")


def _predict_blockwise(args, predictor, output, cells) -> int:
    from ..infer.blockwise import predict_to_ome_zarr
    from ..errors import UsageError

    if args.masks or args.overlays:
        raise UsageError(f"{args.output}: an OME-Zarr output is written without --masks or --overlays (view it whole "
                         "in napari or neuroglancer)")
    if args.segment:
        raise UsageError(f"--segment {args.segment}: a volume predicted block by block keeps its cells in its own "
                         f"labels ({args.output}/labels/cells); give --segment without a path")
    result = predict_to_ome_zarr(predictor.paths, str(args.input), output.location, predictor.settings, predictor.precision,
                                 device=args.device, block=args.block, chunk=args.chunk, dtype=args.dtype,
                                 levels=args.levels, scheduler=args.scheduler,
                                 workers=args.workers or default_threads(cells is not None and bool(predictor.models[0].cfg.offsets)),
                                 channel=predictor.channel, axes=args.axes, progress=not args.quiet,
                                 overwrite=args.overwrite, segment=predictor.segment if cells is not None else None)
    n, h, w = result.shape
    done = result.blocks - result.skipped
    speed = f", {n * h * w / 1e6 / max(result.seconds, 1e-9):.2f} MP/s" if done == result.blocks else ""
    print(f"wrote {args.output}: {n} x {h} x {w} {args.dtype} probabilities (1 = cell interior), OME-Zarr, "
          f"{done} of {result.blocks} blocks computed ({result.skipped} finished before), {result.seconds:.1f} s{speed}")
    if result.cells is not None:
        bias = f", long-range bias {result.long_range_bias:g}" if result.long_range_bias is not None else ""
        kind = "objects across sections" if predictor.segment.link_sections else "cells, ids unique in the volume"
        print(f"wrote {args.output}/labels/cells: {n} x {h} x {w} uint32, {result.cells} {kind}{bias}")
    return 0


def _slice_list(spec: str) -> list[int]:
    from ..errors import UsageError

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
    from ..errors import UsageError
    from ..jobs import score
    from ..score.evaluate import format_sweep

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
    from ..io.storage import is_url
    from ..train.loop import train

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
    from ..errors import UsageError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"'{command}' runs in one process; under torchrun use 'train', then 'evaluate' and 'predict'")


def cmd_run(args) -> int:
    from ..io.storage import is_url, shown
    from ..jobs import run
    from ..score.evaluate import format_table

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
    from ..errors import UsageError
    from ..io.storage import is_url, shown
    from ..jobs import cross_validate

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
    from ..model.checkpoint import import_mindspore, save_weights
    from ..errors import UsageError
    from ..io.storage import staged_output

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
    from ..model.checkpoint import load
    from ..errors import UsageError
    from ..model.export import export_onnx
    from ..io.storage import staged_output

    if args.format == "bioimageio":
        from ..model.bioimageio import export_bioimageio

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
    from ..model.unet import PRESETS, count_parameters, create_model

    for name, fn in PRESETS.items():
        model = create_model(name)
        print(f"{name:<14} {count_parameters(model):>12,d} parameters  {(fn.__doc__ or '').strip()}")
    return 0


def cmd_models(args) -> int:
    from ..model.bundled import bundled_models, describe

    models = bundled_models()
    if not models:
        print("no bundled models in this installation")
    print("\n\n".join(describe(m) for m in models.values()))
    return 0
