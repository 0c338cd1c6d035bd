"""Device and precision choice: what 'auto' picks on each kind of machine, and the refusals."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emunet import device as dev
from emunet.cli import main
from emunet.errors import ConfigError


def _cpu_native(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: native)


def test_auto_on_a_cpu_is_bf16_only_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    _cpu_native(monkeypatch, True)
    assert dev.choose_precision("auto", cpu).precision == "bf16"
    _cpu_native(monkeypatch, False)
    choice = dev.choose_precision("auto", cpu)
    assert choice.precision == "fp32"
    assert "no native bf16" in str(choice) or "ONEDNN_MAX_CPU_ISA" in str(choice)


@pytest.mark.parametrize("cap", ["AVX2", "avx512_core", "AVX512_CORE_VNNI", "SSE41"])
def test_a_onednn_cap_below_bf16_means_fp32(monkeypatch, cap):
    """ONEDNN_MAX_CPU_ISA is read when the choice is made, whatever the processor has."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert not dev.cpu_has_native_bf16()
    choice = dev.choose_precision("auto", torch.device("cpu"))
    assert choice.precision == "fp32" and "ONEDNN_MAX_CPU_ISA" in choice.reason


@pytest.mark.skipif(bool(os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")),
                    reason="oneDNN capped for this process: the hardware's flags do not apply")
def test_native_bf16_agrees_with_the_processors_own_flags():
    """An independent reading: the kernel's CPU flags (Linux) against what PyTorch reports."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    hardware = "avx512_bf16" in flags or "amx_bf16" in flags
    assert dev.cpu_has_native_bf16() == hardware


def test_explicit_bf16_on_an_emulating_cpu_warns_once(monkeypatch, caplog):
    _cpu_native(monkeypatch, False)
    dev._warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="emunet"):
        for _ in range(3):
            assert dev.choose_precision("bf16", torch.device("cpu")).precision == "bf16"
    warned = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warned) == 1 and "fp32" in warned[0].getMessage()


def test_explicit_bf16_on_a_native_cpu_does_not_warn(monkeypatch, caplog):
    _cpu_native(monkeypatch, True)
    dev._warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="emunet"):
        dev.choose_precision("bf16", torch.device("cpu"))
    assert not caplog.records


def test_cuda_and_mps_precisions():
    assert dev.choose_precision("auto", torch.device("cuda")).precision == "fp16"
    assert dev.choose_precision("bf16", torch.device("cuda")).precision == "bf16"
    assert dev.choose_precision("auto", torch.device("mps")).precision == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        dev.choose_precision("fp8", torch.device("cpu"))


def test_auto_device_order_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dev, "mps_available", lambda: True)
    assert dev.resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto").type == "mps"
    monkeypatch.setattr(dev, "mps_available", lambda: False)
    assert dev.resolve_device("auto").type == "cpu"


@pytest.mark.skipif(dev.mps_available(), reason="this machine has MPS")
def test_mps_asked_for_where_absent_is_one_clear_error(small_isbi, tmp_path, capsys):
    with pytest.raises(ConfigError, match="MPS is not available"):
        dev.resolve_device("mps")
    code = main(["train", "-q", "--out", str(tmp_path / "run"), f"data.images={small_isbi['images']}",
                 f"data.labels={small_isbi['labels']}", "train.device=mps", "train.steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MPS is not available" in err[0] and "--device cpu" in err[0]
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_unknown_devices_are_refused():
    for name in ("gpu", "xla", "cuda:x"):
        with pytest.raises(ConfigError):
            dev.resolve_device(name)


@pytest.mark.skipif(not dev.mps_available(), reason="needs Apple's MPS")
def test_mps_trains_and_predicts(small_isbi, tmp_path):
    """Runs only on a Mac with MPS: a few steps, then predict on the same device."""
    out = tmp_path / "run"
    assert main(["train", "-q", "--out", str(out), f"data.images={small_isbi['images']}",
                 f"data.labels={small_isbi['labels']}", "train.device=mps", "train.steps=2", "train.val_every=0",
                 "model.preset=unet_cpu", "model.width=4", "model.depth=2", "train.tile=32", "train.batch_size=2",
                 "predict.tile=64"]) == 0
    assert main(["predict", str(out / "best.safetensors"), str(small_isbi["test"]), "-o", str(tmp_path / "p.tif"),
                 "--device", "mps", "-q"]) == 0


def test_adam_falls_back_where_the_fused_kernel_is_missing(monkeypatch):
    """MPS lacks fused Adam on some PyTorch versions: the optimiser is then the plain one, not a crash."""
    from emunet.train.loop import make_adam

    real = torch.optim.Adam

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = make_adam(params, 1e-3, 0.0)
    assert not opt.defaults.get("fused")
    params[0].grad = torch.ones(3)
    opt.step()
    assert params[0].detach().lt(1).all()


def test_batches_pin_memory_only_for_cuda(small_isbi):
    """Pinned memory is a CUDA feature: CPU and MPS batches are plain tensors."""
    from emunet.train.augment import AugmentConfig
    from emunet.train.batches import make_batch_fn
    from emunet.io.data import load_labelled
    from emunet.train.sampling import TileSampler

    vol = load_labelled(small_isbi["images"], small_isbi["labels"])
    sampler = TileSampler(vol, 48, 48, torch.Generator().manual_seed(0))
    images, _ = make_batch_fn(sampler, AugmentConfig(), 2, slice(None), 48, torch.device("cpu"), torch.channels_last)()
    assert not images.is_pinned() and images.shape == (2, 1, 48, 48)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_threads_count_the_cores_this_process_may_use_not_the_machines():
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from emunet.device import usable_cores; print(usable_cores())"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert shown == "1"
    assert dev.usable_cores() == len(os.sched_getaffinity(0))
