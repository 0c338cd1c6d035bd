#!/usr/bin/env bash
# Every CUDA check of emunet in one run, about 4-5 minutes on one H100 or H200:
#   1. benchmarks/speed.py: both presets at batch 16, bf16, the project's training step fed by
#      its batch stream beside a plain PyTorch loop in the same process ("x plain"), the share
#      of the step spent waiting for data, inference MP/s, all against the GPU's matmul peak;
#   2. the same under torch.compile;
#   3. the lab's job end to end (`unet run -c configs/isbi-lab.yaml`: 600 steps of batch 16, the
#      lab's initial weights, validation every 50 steps with the challenge's exact scores, test
#      prediction), once in the lab's fp16 with loss scale 1024 and once in bf16;
#   4. data-parallel under torchrun (NCCL), 20 steps;
#   5. blockwise prediction of a 4 x 4096 x 4096 Zarr volume into OME-Zarr with the bf16 model
#      (megapixels per second, beside the in-memory prediction of one slice).
# A check that fails is reported and the next one still runs.
#
# Usage, from the repository root:  bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]
#   DATA_DIR holds the ISBI 2012 stacks train-volume.tif, train-labels.tif, test-volume.tif;
#   python3 needs torch, numpy, scipy, scikit-image, tifffile, safetensors, tensorboard, tqdm,
#   pyyaml, numba, zarr, ome-zarr, h5py and dask. OUT_DIR (default ./gpu-check) receives 8 small
#   files: speed.json, speed-compile.json, lab-fp16-eval.json, lab-bf16-eval.json, lab.log,
#   ddp.log, volume.log and summary.txt, whose table is also printed last.
# Without a GPU, a dry run of the script itself, with the CPU preset in place of the lab's
# (about 10 minutes on 2 cores):
#   DEVICE=cpu STEPS=20 SPEED_CASES=cpu VOLUME_SIDE=1024 LAB_CONFIG=configs/isbi-cpu.yaml bash benchmarks/gpu_check.sh DIR OUT
set -uo pipefail
data=${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]  (DATA_DIR with train-volume.tif, train-labels.tif, test-volume.tif)}
out=${2:-${OUT:-gpu-check}}
device=${DEVICE:-cuda}
steps=${STEPS:-600}
cases=${SPEED_CASES:-lab,cpu}
side=${VOLUME_SIDE:-4096}
lab_config=${LAB_CONFIG:-configs/isbi-lab.yaml}
py=${PYTHON:-python3}
runs=$(mktemp -d)
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data_keys=(data.images="$data/train-volume.tif" data.labels="$data/train-labels.tif" data.test_images="$data/test-volume.tif")
failed=()

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
} > "$runs/env.txt"
cat "$runs/env.txt"

echo "== 1. speed, eager"
"$py" benchmarks/speed.py --device "$device" --data "$data" --cases "$cases" --json "$out/speed.json" || failed+=(speed)
echo "== 2. speed, torch.compile"
"$py" benchmarks/speed.py --device "$device" --data "$data" --cases "$cases" --compile --json "$out/speed-compile.json" \
  || failed+=(speed-compile)

: > "$out/lab.log"
for precision in fp16 bf16; do
  echo "== 3. the lab's job end to end, $precision ($steps steps)" | tee -a "$out/lab.log"
  start=$SECONDS
  "$py" -m emunet run -c "$lab_config" -q "${data_keys[@]}" out_dir="$runs/lab-$precision" \
    train.steps="$steps" train.precision="$precision" train.device="$device" 2>&1 | tee -a "$out/lab.log" \
    || failed+=(lab-$precision)
  echo "wall_s $((SECONDS - start))" | tee -a "$out/lab.log" "$runs/lab-$precision.wall"
  tail -n 1 "$runs/lab-$precision/metrics.csv" 2>/dev/null >> "$out/lab.log"
  cp "$runs/lab-$precision/eval.json" "$out/lab-$precision-eval.json" 2>/dev/null
  cp "$runs/lab-$precision/metrics.csv" "$runs/lab-$precision-metrics.csv" 2>/dev/null
done

echo "== 4. data-parallel under torchrun, 20 steps" | tee "$out/ddp.log"
"$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m emunet train -c "$lab_config" -q \
  "${data_keys[@]}" out_dir="$runs/ddp" train.steps=20 train.val_every=0 train.device="$device" 2>&1 \
  | tee -a "$out/ddp.log" || failed+=(ddp)
tail -n 2 "$runs/ddp/metrics.csv" 2>/dev/null >> "$out/ddp.log"

echo "== 5. blockwise prediction of a 4 x $side x $side volume" | tee "$out/volume.log"
"$py" benchmarks/volume_predict.py "$runs/lab-bf16/best.safetensors" --data "$data" --sections 4 --side "$side" \
  --work "$runs/volume" 2>&1 | tee -a "$out/volume.log" || failed+=(volume)

"$py" - "$out" "$runs" "${failed[*]:-}" <<'EOF' | tee "$out/summary.txt"
import csv, json, os, sys
out, runs, failed = sys.argv[1], sys.argv[2], sys.argv[3]
print(open(os.path.join(runs, "env.txt")).read().strip())
print(f"{'speed':<24}{'img/s':>9}{'plain':>9}{'x plain':>9}{'of peak':>9}{'data':>7}{'MP/s':>8}")
for name in ("speed.json", "speed-compile.json"):
    try:
        cases = json.load(open(os.path.join(out, name)))["cases"]
    except (OSError, ValueError):
        print(f"{name}: missing"); continue
    for r in cases:
        label = f"{r['case']} {r['precision']}" + (" compiled" if "compile" in name else "")
        print(f"{label:<24}{r['train_images_per_s']:>9.1f}{r['plain_images_per_s']:>9.1f}{r['of_plain']:>9.2f}"
              f"{r['fraction_of_peak']:>9.0%}{r['data_share']:>7.1%}{r['infer_mpix_per_s']:>8.1f}")
print(f"{'lab job':<24}{'wall s':>9}{'train s':>9}{'val %':>9}{'lab dice':>9}{'V_rand':>8}{'V_info':>8}")
for precision in ("fp16", "bf16"):
    try:
        ev = json.load(open(os.path.join(out, f"lab-{precision}-eval.json")))
        rows = list(csv.DictReader(open(os.path.join(runs, f"lab-{precision}-metrics.csv"))))
        wall = float(open(os.path.join(runs, f"lab-{precision}.wall")).read().split()[-1])
    except (OSError, ValueError):
        print(f"lab {precision}: missing"); continue
    last = rows[-1]
    train_s, loop_s = float(last["train_s"]), float(last["wall_s"])
    m = ev["mean"]
    print(f"{'lab ' + precision:<24}{wall:>9.0f}{train_s:>9.1f}{(loop_s - train_s) / loop_s:>9.1%}"
          f"{m['lab_dice']:>9.4f}{m['v_rand']:>8.4f}{m['v_info']:>8.4f}")
for line in open(os.path.join(out, "volume.log")).read().splitlines() if os.path.exists(os.path.join(out, "volume.log")) else []:
    if line.startswith(("in-memory", "blockwise")):
        print(line)
print("failed: " + failed if failed else "all checks ran")
EOF
rm -rf "$runs"
((${#failed[@]} == 0))
