#!/usr/bin/env bash
# Every CUDA check in one run (about 8-12 minutes on one H100 or H200):
#   1. benchmarks/speed.py on the GPU: both presets at batch 16 with bf16 autocast, against the
#      GPU's own matmul peak;
#   2. the same under torch.compile;
#   3. the lab preset end to end, seeds 1 and 2 (`unet run -c configs/isbi-lab.yaml`: 600 steps of
#      batch 16, the lab's initial weights, fp16 with a GradScaler at the lab's loss scale,
#      evaluation with the challenge's exact scores, test prediction); the lab reports 0.911;
#   4. the NCCL path: 20 steps of the lab preset under torchrun.
# A step that fails is reported and the next one still runs.
#
# Needs: DATA_DIR with the ISBI files (train-volume.tif, train-labels.tif, test-volume.tif), run
# from the repository root with a python3 that has torch, numpy, scipy, scikit-image, tifffile,
# safetensors, tensorboard, tqdm, pyyaml and numba (without numba the scores run, slowly).
# Writes into $OUT (default ./gpu-check): env.txt, speed.log, speed.json, speed-compile.json,
# lab.log, lab-seed1-eval.json, lab-seed2-eval.json, lab-seed1-metrics.csv, lab-seed2-metrics.csv,
# ddp.log.
# A dry run without a GPU: DEVICE=cpu STEPS=2 SPEED_CASES=cpu bash benchmarks/gpu_check.sh DIR
set -uo pipefail
data=${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR (with train-volume.tif, train-labels.tif, test-volume.tif)}
out=${OUT:-gpu-check}
device=${DEVICE:-cuda}
steps=${STEPS:-600}
cases=${SPEED_CASES:-lab,cpu}
py=${PYTHON:-python3}
runs=$(mktemp -d)
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data_keys=(data.images="$data/train-volume.tif" data.labels="$data/train-labels.tif" data.test_images="$data/test-volume.tif")
failed=()

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } > "$out/env.txt"
cat "$out/env.txt"

echo "== 1. speed, eager" | tee "$out/speed.log"
"$py" benchmarks/speed.py --device "$device" --data "$data" --cases "$cases" --json "$out/speed.json" 2>&1 \
  | tee -a "$out/speed.log" || failed+=(speed)
echo "== 2. speed, torch.compile" | tee -a "$out/speed.log"
"$py" benchmarks/speed.py --device "$device" --data "$data" --cases "$cases" --compile --json "$out/speed-compile.json" 2>&1 \
  | tee -a "$out/speed.log" || failed+=(speed-compile)

for seed in 1 2; do
  echo "== 3. lab preset end to end ($steps steps, seed $seed)" | tee -a "$out/lab.log"
  start=$SECONDS
  "$py" -m emunet run -c configs/isbi-lab.yaml -q "${data_keys[@]}" out_dir="$runs/lab$seed" train.steps="$steps" \
    train.seed="$seed" train.device="$device" 2>&1 | tee -a "$out/lab.log" || failed+=(lab-seed$seed)
  echo "wall: $((SECONDS - start)) s" | tee -a "$out/lab.log"
  cp "$runs/lab$seed/eval.json" "$out/lab-seed$seed-eval.json" 2>/dev/null
  cp "$runs/lab$seed/metrics.csv" "$out/lab-seed$seed-metrics.csv" 2>/dev/null
done

echo "== 4. DDP under torchrun (NCCL on CUDA), 20 steps" | tee "$out/ddp.log"
"$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m emunet train -c configs/isbi-lab.yaml -q \
  "${data_keys[@]}" out_dir="$runs/ddp" train.steps=20 train.val_every=0 train.device="$device" 2>&1 \
  | tee -a "$out/ddp.log" || failed+=(ddp)
tail -n 3 "$runs/ddp/metrics.csv" 2>/dev/null | tee -a "$out/ddp.log"

rm -rf "$runs"
if ((${#failed[@]})); then echo "failed: ${failed[*]}"; exit 1; fi
echo "all checks ran; figures in $out"
