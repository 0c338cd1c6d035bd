"""Speed benchmark: training and inference throughput against the machine's own matmul peak.

Measures, in one run, for the lab preset (unet_medical, 572 -> 388) and the CPU preset
(unet_cpu, 256 px tiles): training images/s of the project's own step fed by its batch stream,
beside a plain reference loop in the same process on the same device (the same network written
in a page of plain PyTorch, one fixed random batch, the same precision, layout and fused Adam;
"x plain" is the project's speed over the plain loop's), and achieved GFLOP/s (from counted MACs: a
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
    # name: preset, overrides, training tile (output side), batch, precision, timed steps;
    # "auto" is what a run on this machine chooses (bf16 only where the CPU runs it natively)
    "lab": ("unet_medical", {}, 388, 1, "auto", 3),
    "lab-fp32": ("unet_medical", {}, 388, 1, "fp32", 2),
    "cpu": ("unet_cpu", {"width": 8}, 256, 8, "auto", 20),  # configs/isbi-cpu.yaml's network
}


def machine_line(device: torch.device) -> str:
    """The device (on a CPU, the ISA PyTorch's kernels run at) and what precision 'auto' chooses
    there, with the reason (which names an ONEDNN_MAX_CPU_ISA cap)."""
    from emunet.device import choose_precision

    if device.type == "cpu":
        where = f"cpu: ATen kernels {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    else:
        where = f"{device}: {torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type}"
    return f"{where}; auto = {choose_precision('auto', device)}"


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


class PlainUNet(nn.Module):
    """The reference: a U-Net as a user would write it in a page of plain PyTorch, with no code
    of this project; the same shape as the preset it stands beside."""

    def __init__(self, width: int, depth: int, same: bool, batchnorm: bool) -> None:
        super().__init__()

        def double(cin: int, cout: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for c in (cin, cout):
                layers += [nn.Conv2d(c, cout, 3, padding=int(same))]
                layers += [nn.BatchNorm2d(cout)] if batchnorm else []
                layers += [nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([double(1, chans[0])] + [double(a, b) for a, b in zip(chans, chans[1:])])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2, bias=False) for a, b in zip(chans, chans[1:])])
        self.merge = nn.ModuleList([double(b, a) for a, b in zip(chans, chans[1:])])
        self.head = nn.Conv2d(chans[0], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(reversed(self.up), reversed(self.merge), reversed(skips[:-1])):
            x = torch.relu(up(x))
            top = (skip.shape[-1] - x.shape[-1]) // 2
            x = merge(torch.cat([skip[..., top : top + x.shape[-2], top : top + x.shape[-1]], x], dim=1))
        return self.head(x)


def time_steps(step, steps: int, device: torch.device) -> float:
    """Seconds per step, after one warm-up step."""
    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def run_case(name: str, device: torch.device, data: str = ISBI_DIR, compile_model: bool = False) -> dict:
    """One preset in one process: the plain loop, the project's training step on a fixed batch,
    the same step fed by the project's batch stream (sampling + augmentation, prepared ahead
    as a run prepares them), inference speed and peak memory."""
    from emunet.train.batches import BatchStream, make_batch_fn
    from emunet.config import load_config
    from emunet.io.data import Volume, load_labelled
    from emunet.train.sampling import TileSampler
    from emunet.device import autocast_for, resolve_precision
    from emunet.infer.tiling import predict_image
    from emunet.train.loop import TrainState, _train_step, build_model, make_adam

    preset, overrides, tile, batch, precision, steps = CASES[name]
    precision = resolve_precision(precision, device)
    if device.type == "cuda":
        batch, steps = 16, 20
        torch.backends.cudnn.benchmark = True
    cfg = load_config(None, [f"model.preset={preset}", *(f"model.{k}={v}" for k, v in overrides.items()),
                             f"train.batch_size={batch}", f"train.tile={tile}",
                             f"train.precision={precision}", "train.lr=1e-4", "train.weight_decay=0"])
    fmt = torch.channels_last
    model = build_model(cfg)
    in_size = model.fit_input_size(tile)
    out_size = model.output_size(in_size)
    macs = count_macs(model, (1, 1, in_size, in_size))
    model = model.to(device, memory_format=fmt).train()
    state = TrainState(cfg, model, device, precision)
    net = torch.compile(model) if compile_model else model

    # the plain loop: one fixed random batch, the same precision, layout and fused Adam
    m = model.cfg
    plain = PlainUNet(m.width, m.depth, m.padding == "same", m.norm == "batch").to(device, memory_format=fmt)
    plain_opt = make_adam(plain.parameters(), 1e-4, 0.0)
    plain_net = torch.compile(plain) if compile_model else plain
    fixed_x = torch.rand(batch, 1, in_size, in_size, device=device).contiguous(memory_format=fmt)
    fixed_y = torch.randint(0, 2, (batch, out_size, out_size), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def plain_step() -> None:
        with autocast_for(device, precision):
            loss = nn.functional.cross_entropy(plain_net(fixed_x).float(), fixed_y)
        plain_opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(plain_opt)
        scaler.update()

    plain_s = time_steps(plain_step, steps, device)

    vol = load_labelled(f"{data}/train-volume.tif", f"{data}/train-labels.tif")
    vol = Volume(vol.images[:24], vol.names[:24], vol.source, vol.labels[:24])
    sampler = TileSampler(vol, in_size, out_size, state.sample_gen)
    next_batch = make_batch_fn(sampler, cfg.augment, batch, slice(None), out_size, device, fmt)
    fixed = next_batch()
    fixed_s = time_steps(lambda: _train_step(state, net, fixed, cfg, precision), steps, device)
    ahead = 2 if device.type == "cuda" else 0  # as a run prepares them (train.prefetch unset)
    with BatchStream(next_batch, state.sample_gen, ahead, device) as stream:
        train_s = time_steps(lambda: _train_step(state, net, next(stream), cfg, precision), steps, device)
    conv_share = convolution_share(lambda: _train_step(state, net, fixed, cfg, precision), device)

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
    images_per_s = batch / train_s
    return {"case": name, "preset": preset, "input": in_size, "batch": batch, "precision": precision,
            "gmac_per_image": macs / 1e9, "train_images_per_s": images_per_s, "train_gflops": 3 * 2 * macs * images_per_s / 1e9,
            "plain_images_per_s": batch / plain_s, "fixed_batch_images_per_s": batch / fixed_s,
            "of_plain": plain_s / train_s, "data_share": max(0.0, 1 - fixed_s / train_s), "conv_share": conv_share,
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

    from emunet.device import cpu_has_native_bf16

    print(machine_line(device))
    # an emulated bf16 matmul of 4096^2 takes minutes on an AVX2 CPU and says nothing useful
    bf16_native = device.type != "cpu" or cpu_has_native_bf16()
    peaks = {"fp32": matmul_peak(torch.float32, device),
             "bf16": matmul_peak(torch.bfloat16, device) if bf16_native else float("nan")}
    bf16_peak = f"{peaks['bf16']:.0f} GFLOP/s" if bf16_native else "not measured (emulated)"
    print(f"{device}: matmul 4096^2 peak  fp32 {peaks['fp32']:.0f} GFLOP/s   bf16 {bf16_peak}")
    results = []
    for name in args.cases.split(","):
        done = subprocess.run([sys.executable, __file__, "--one", name, "--device", args.device, "--data", args.data]
                              + (["--compile"] if args.compile else []),
                              capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"case {name} failed (exit {done.returncode}); its error is above")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        peak = peaks["bf16" if r["precision"] == "bf16" else "fp32"]
        r["fraction_of_peak"] = r["train_gflops"] / peak
        r["plain_fraction_of_peak"] = r["train_gflops"] / r["of_plain"] / peak
        # the convolutions alone: the same FLOPs over only the time spent in them
        r["conv_fraction_of_peak"] = r["fraction_of_peak"] / r["conv_share"] if r["conv_share"] else 0.0
        results.append(r)
    head = (f"{'case':<9}{'prec':>6}{'in':>5}{'batch':>6}{'GMAC/img':>10}{'img/s':>8}{'plain':>8}{'x plain':>8}"
            f"{'GFLOP/s':>9}{'of peak':>9}{'plain of peak':>14}"
            f"{'conv':>6}{'conv of peak':>13}{'data':>7}{'MP/s':>7}{'peak MB':>9}")
    print(head)
    for r in results:
        print(f"{r['case']:<9}{r['precision']:>6}{r['input']:>5}{r['batch']:>6}{r['gmac_per_image']:>10.1f}"
              f"{r['train_images_per_s']:>8.2f}{r['plain_images_per_s']:>8.2f}{r['of_plain']:>8.2f}"
              f"{r['train_gflops']:>9.0f}{r['fraction_of_peak']:>9.0%}{r['plain_fraction_of_peak']:>14.0%}"
              f"{r['conv_share']:>6.0%}{r['conv_fraction_of_peak']:>13.0%}"
              f"{r['data_share']:>7.0%}{r['infer_mpix_per_s']:>7.2f}{r['peak_mb']:>9.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "matmul_peak_gflops": peaks, "cases": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
