#!/usr/bin/env bash
# The CUDA checks in one prepared run, for a session that is lent a GPU (about 5-8 minutes on
# one H100; nothing to install: the GPU image's python3 has torch, tifffile, safetensors,
# scikit-image, tensorboard, tqdm and pyyaml):
#   1. benchmarks/speed.py on the GPU: both presets at batch 16 with bf16 autocast, against the
#      GPU's own matmul peak (target: the lab preset at 300 images/s or more on one H100);
#   2. the same under torch.compile;
#   3. the lab preset end to end (`unet run -c configs/isbi-lab.yaml`: 600 steps of batch 16,
#      fp16 with a GradScaler at the lab's loss scale, evaluation, test prediction);
#   4. the NCCL path: 20 steps of the lab preset under torchrun.
# A step that fails is reported and the next one still runs.
#
# The ISBI files do not travel with the working tree (they live in ../shared), so copy them into
# an ignored folder first and carry it:
#   mkdir -p .isbi && cp ../shared/data/isbi2012/*.tif .isbi/ && echo /.isbi/ >> .git/info/exclude
#   device run: carry [".isbi"], command "bash benchmarks/gpu_check.sh .isbi"
# Eight files come back in $OUT (the device tool's folder; ./gpu-check without it): env.txt,
# speed.log, speed.json, speed-compile.json, lab.log, lab-eval.json, lab-metrics.csv, ddp.log.
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

echo "== 3. lab preset end to end ($steps steps)" | tee "$out/lab.log"
start=$SECONDS
"$py" -m emunet run -c configs/isbi-lab.yaml -q "${data_keys[@]}" out_dir="$runs/lab" train.steps="$steps" \
  train.device="$device" 2>&1 | tee -a "$out/lab.log" || failed+=(lab)
echo "wall: $((SECONDS - start)) s" | tee -a "$out/lab.log"
cp "$runs/lab/eval.json" "$out/lab-eval.json" 2>/dev/null
cp "$runs/lab/metrics.csv" "$out/lab-metrics.csv" 2>/dev/null

echo "== 4. DDP under torchrun (NCCL on CUDA), 20 steps" | tee "$out/ddp.log"
"$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m emunet train -c configs/isbi-lab.yaml -q \
  "${data_keys[@]}" out_dir="$runs/ddp" train.steps=20 train.val_every=0 train.device="$device" 2>&1 \
  | tee -a "$out/ddp.log" || failed+=(ddp)
tail -n 3 "$runs/ddp/metrics.csv" 2>/dev/null | tee -a "$out/ddp.log"

rm -rf "$runs"
if ((${#failed[@]})); then echo "failed: ${failed[*]}"; exit 1; fi
echo "all checks ran; figures in $out"
