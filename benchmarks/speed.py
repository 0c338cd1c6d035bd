"""Speed benchmark: training and inference throughput against the machine's own matmul peak.

Measures, in one run, for the lab preset (unet_medical, 572 -> 388) and the CPU preset
(unet_cpu, 256 px tiles): training images/s and achieved GFLOP/s (from counted MACs: a
training step costs about 3x the forward pass, 2 FLOPs per MAC), the share of step time spent
in tile sampling and augmentation, overlap-tile inference megapixels/s, and peak memory (each
case in a fresh subprocess); plus the fp32 and bf16 matmul peak, printing every figure as a
fraction of it; and the share of a step spent in convolution kernels, with the rate the
convolutions alone reach (the ceiling for the whole step is the convolutions' own rate).
On CUDA the same runs on the GPU.

    python benchmarks/speed.py                   # all cases, ~5 minutes on 2 CPU cores
    python benchmarks/speed.py --cases cpu       # one preset
    python benchmarks/speed.py --json out.json   # also write the figures
    python benchmarks/speed.py --compile         # the same under torch.compile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch import nn

ISBI_DIR = "../shared/data/isbi2012"  # beside the checkout, as in CI

CASES = {
    # name: preset, overrides, training tile (output side), batch, precision, timed steps
    "lab": ("unet_medical", {}, 388, 1, "bf16", 3),
    "lab-fp32": ("unet_medical", {}, 388, 1, "fp32", 2),
    "cpu": ("unet_cpu", {}, 256, 8, "bf16", 20),
}


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass, counted on the convolutions."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        cin = module.in_channels // module.groups
        if isinstance(module, nn.ConvTranspose2d):
            total += inputs[0].numel() * module.out_channels * k // module.groups
        else:
            total += output.numel() * cin * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.zeros(shape))
    for h in handles:
        h.remove()
    return total


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 4096, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def convolution_share(step, device: torch.device) -> float:
    """Share of one profiled training step spent in convolution kernels (forward and backward).

    The rest (ReLU, pooling, copies, the optimiser) is memory-bound: it bounds how close the
    whole step can come to the matmul peak however fast the convolutions are.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step()
    cuda = device.type == "cuda"
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    # GPU events are kernels (cuDNN names its convolution kernels conv* or *gemm*); CPU events
    # are ATen ops, whose self time for a oneDNN convolution sits in these two
    cpu_ops = ("aten::mkldnn_convolution", "aten::convolution_backward")
    total = conv = 0.0
    for e in prof.key_averages():
        t = getattr(e, attr)
        total += t
        name = e.key.lower()
        if ("conv" in name or "gemm" in name) if cuda else e.key in cpu_ops:
            conv += t
    return conv / total if total else 0.0


def run_case(name: str, device: torch.device, data: str = ISBI_DIR, compile_model: bool = False) -> dict:
    """One preset: training speed, data share, inference speed, peak memory (this process)."""
    from emunet.augment import AugmentConfig, augment_batch
    from emunet.data import TileSampler, Volume, load_labelled, to_network_input
    from emunet.losses import segmentation_loss
    from emunet.model import create_model
    from emunet.device import autocast_for
    from emunet.tiling import predict_image
    from emunet.train import make_adam

    preset, overrides, tile, batch, precision, steps = CASES[name]
    if device.type == "cuda":
        batch, steps, precision = 16, 20, "bf16" if precision == "bf16" else precision
    model = create_model(preset, **overrides)
    in_size = model.fit_input_size(tile)
    out_size = model.output_size(in_size)
    macs = count_macs(model, (1, 1, in_size, in_size))
    fmt = torch.channels_last
    model = model.to(device, memory_format=fmt).train()
    opt = make_adam(model.parameters(), 1e-4, 0.0)
    if compile_model:
        model = torch.compile(model)
    vol = load_labelled(f"{data}/train-volume.tif", f"{data}/train-labels.tif")
    vol = Volume(vol.images[:24], vol.names[:24], vol.source, vol.labels[:24])
    gen = torch.Generator().manual_seed(0)
    sampler = TileSampler(vol, in_size, out_size, gen)
    aug = AugmentConfig()
    crop = (in_size - out_size) // 2

    def step() -> float:
        t0 = time.perf_counter()
        x, y = sampler.sample(batch)
        x, y = augment_batch(x.to(device), y.to(device), aug, gen)  # on the device, as training does
        y = y[:, crop : crop + out_size, crop : crop + out_size] if crop else y
        sync(device)
        data_s = time.perf_counter() - t0
        x = to_network_input(x).contiguous(memory_format=fmt)
        with autocast_for(device, precision):
            logits = model(x)
        loss = segmentation_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        return data_s

    step()  # warm-up
    t0 = time.perf_counter()
    data = sum(step() for _ in range(steps))
    train_s = (time.perf_counter() - t0) / steps
    images_per_s = batch / train_s
    train_gflops = 3 * 2 * macs * images_per_s / 1e9

    conv_share = convolution_share(step, device)

    model.eval()
    image = vol.images[0]
    predict_image(model, image, tile=tile, overlap=0.0, batch_size=4, precision=precision)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        predict_image(model, image, tile=tile, overlap=0.0, batch_size=4, precision=precision)
    sync(device)
    mpix = reps * image.size / (time.perf_counter() - t0) / 1e6
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": name, "preset": preset, "input": in_size, "batch": batch, "precision": precision,
            "gmac_per_image": macs / 1e9, "train_images_per_s": images_per_s, "train_gflops": train_gflops,
            "data_share": data / (train_s * steps), "conv_share": conv_share,
            "infer_mpix_per_s": mpix, "peak_mb": peak_mb}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated of {', '.join(CASES)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--compile", action="store_true", help="time the model under torch.compile (inductor)")
    parser.add_argument("--data", default=ISBI_DIR, help="folder with train-volume.tif and train-labels.tif")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    for name in ("train-volume.tif", "train-labels.tif"):
        if not os.path.isfile(os.path.join(args.data, name)):
            parser.error(f"{os.path.join(args.data, name)}: no such file (--data names the folder with the ISBI stacks)")
    if args.one:
        print(json.dumps(run_case(args.one, device, args.data, args.compile)))
        return 0

    peaks = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    print(f"{device}: matmul 4096^2 peak  fp32 {peaks['fp32']:.0f} GFLOP/s   bf16 {peaks['bf16']:.0f} GFLOP/s")
    results = []
    for name in args.cases.split(","):
        done = subprocess.run([sys.executable, __file__, "--one", name, "--device", args.device, "--data", args.data]
                              + (["--compile"] if args.compile else []),
                              capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"case {name} failed (exit {done.returncode}); its error is above")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["fraction_of_peak"] = r["train_gflops"] / peaks["bf16" if r["precision"] == "bf16" else "fp32"]
        # the convolutions alone: the same FLOPs over only the time spent in them
        r["conv_fraction_of_peak"] = r["fraction_of_peak"] / r["conv_share"] if r["conv_share"] else 0.0
        results.append(r)
    head = (f"{'case':<9}{'prec':>6}{'in':>5}{'batch':>6}{'GMAC/img':>10}{'img/s':>8}{'GFLOP/s':>9}{'of peak':>9}"
            f"{'conv':>6}{'conv of peak':>13}{'data':>7}{'MP/s':>7}{'peak MB':>9}")
    print(head)
    for r in results:
        print(f"{r['case']:<9}{r['precision']:>6}{r['input']:>5}{r['batch']:>6}{r['gmac_per_image']:>10.1f}"
              f"{r['train_images_per_s']:>8.2f}{r['train_gflops']:>9.0f}{r['fraction_of_peak']:>9.0%}"
              f"{r['conv_share']:>6.0%}{r['conv_fraction_of_peak']:>13.0%}"
              f"{r['data_share']:>7.0%}{r['infer_mpix_per_s']:>7.2f}{r['peak_mb']:>9.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "matmul_peak_gflops": peaks, "cases": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
