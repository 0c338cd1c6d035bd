"""Blockwise prediction of a volume larger than memory: a synthetic 16 x 8192 x 8192 uint8 Zarr
volume (the ISBI training slices tiled, 1 GiB) predicted into OME-Zarr with a checkpoint,
against the in-memory prediction of one ISBI slice with the same settings.

    python benchmarks/volume_predict.py runs/isbi-cpu/best.safetensors            # in this process
    python benchmarks/volume_predict.py CKPT --sections 4 --scheduler local-2     # a dask scheduler + 2 workers
    python benchmarks/volume_predict.py CKPT --block 4096                         # other options go to `unet predict`

Prints megapixels per second of both, their ratio, and the peak resident memory of the
blockwise run (it runs as `unet predict` in a child process, measured by the kernel's rusage);
with --scheduler local-2 it starts `dask scheduler` and two `dask worker` processes on loopback
and checks that the output equals the in-process one, when that exists for the same sections.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ISBI = Path("../shared/data/isbi2012")


def make_volume(path: Path, sections: int, side: int, data: Path = ISBI) -> None:
    import tifffile
    import zarr

    if (path / ".zarray").is_file() and zarr.open_array(str(path), mode="r").shape == (sections, side, side):
        return
    slices = tifffile.imread(data / "train-volume.tif")
    array = zarr.open_array(str(path), mode="w", shape=(sections, side, side), chunks=(1, 1024, 1024), dtype=np.uint8,
                            zarr_format=2)
    reps = side // slices.shape[1]
    for z in range(sections):
        # each section a different mosaic of the 30 slices, mirrored so that seams are smooth
        tiles = [[slices[(z + 7 * i + 3 * j) % len(slices)] for j in range(reps)] for i in range(reps)]
        rows = [np.concatenate([t if j % 2 == 0 else t[:, ::-1] for j, t in enumerate(row)], axis=1) for row in tiles]
        array[z] = np.concatenate([r if i % 2 == 0 else r[::-1] for i, r in enumerate(rows)], axis=0)


def one_slice_mp_per_s(checkpoint: str, data: Path = ISBI, reps: int = 7) -> float:
    """The in-memory `predict` of one ISBI slice (512 x 512), as `unet predict` runs it: the
    median of ``reps`` runs (one takes a quarter of a second, so single runs are noisy)."""
    from emunet.io.data import read_images
    from emunet.device import resolve_precision
    from emunet.infer.predict import load_models, predict_volume

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_models([checkpoint], device)
    volume = read_images(data / "test-volume.tif", intensity=loaded.intensity)
    one = volume.subset([0])
    precision = resolve_precision("auto", device)
    predict_volume(loaded.models, one, loaded.config.predict, precision)  # warm-up
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        predict_volume(loaded.models, one, loaded.config.predict, precision)
        seconds.append(time.perf_counter() - start)
    return one.images.size / float(np.median(seconds)) / 1e6


def run_blockwise(checkpoint: str, source: Path, output: Path, extra: list[str]) -> tuple[float, float]:
    """Seconds and peak resident MB of `unet predict` into OME-Zarr, in a child process."""
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(output.parent / f".{output.name}.blocks", ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "emunet", "predict", checkpoint, str(source), "-o", str(output), "-q", *extra],
                   check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def local_cluster(workers: int) -> tuple[str, list[subprocess.Popen]]:
    """`dask scheduler` and `workers` `dask worker` processes on loopback, one thread each."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(3)
    procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    time.sleep(5)
    return address, procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--sections", type=int, default=16)
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--work", default="/tmp/emunet-volume-bench", help="folder for the input and outputs")
    parser.add_argument("--data", type=Path, default=ISBI, help="folder with the ISBI stacks (default: %(default)s)")
    parser.add_argument("--scheduler", choices=["in-process", "local-2"], default="in-process")
    args, passed_on = parser.parse_known_args()  # the rest goes to `unet predict`, e.g. --block 4096
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"volume-{args.sections}x{args.side}.zarr"
    make_volume(source, args.sections, args.side, args.data)
    pixels = args.sections * args.side**2
    before = one_slice_mp_per_s(args.checkpoint, args.data)
    print(f"in-memory predict of one 512 x 512 slice: {before:.2f} MP/s (before)")
    output = work / f"pred-{args.sections}-{args.scheduler}.ome.zarr"
    procs: list[subprocess.Popen] = []
    extra: list[str] = [a for a in passed_on if a != "--"]
    if args.scheduler == "local-2":
        address, procs = local_cluster(2)
        extra += ["--scheduler", address]
    try:
        seconds, peak_mb = run_blockwise(args.checkpoint, source, output, extra)
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
    after = one_slice_mp_per_s(args.checkpoint, args.data)  # the machine's speed drifts: measured on both sides
    reference = (before + after) / 2
    print(f"in-memory predict of one 512 x 512 slice: {after:.2f} MP/s (after)")
    rate = pixels / seconds / 1e6
    print(f"blockwise {args.sections} x {args.side} x {args.side} ({pixels / 2**30:.2f} Gpx) -> OME-Zarr, "
          f"{args.scheduler}: {seconds:.0f} s, {rate:.2f} MP/s = {rate / reference:.2f} x one slice in memory "
          f"(the mean of before and after); "
          f"peak RSS of the `unet predict` process {peak_mb:.0f} MB")
    other = work / f"pred-{args.sections}-in-process.ome.zarr"
    if args.scheduler == "local-2" and (other / "0").is_dir():
        import zarr

        same = np.array_equal(zarr.open_array(str(other / "0"), mode="r")[...], zarr.open_array(str(output / "0"), mode="r")[...])
        print(f"output identical to the in-process run: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
