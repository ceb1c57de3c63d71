#!/usr/bin/env bash
# The training/embedding benches on a CUDA machine with ViT-B-32 (random weights: throughput and
# memory do not depend on them). Writes one JSON per bench into ${OUT:-bench-out}/.
set -euo pipefail
cd "$(dirname "$0")"
out=${OUT:-bench-out}; mkdir -p "$out"
vit=(--model ViT-B-32 --pretrained none --image-size 224)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python train_step_overhead.py "${vit[@]}" --batch 256 --steps 10 --workers 12 > "$out/overhead_bf16.json"
python train_step_overhead.py "${vit[@]}" --batch 256 --steps 10 --workers 12 --precision fp16 > "$out/overhead_fp16.json"
python embed_throughput.py "${vit[@]}" --batch 512 --workers 12 --images 8192 > "$out/embed.json"
python feature_cache.py "${vit[@]}" --samples 4096 --batch 256 > "$out/feature_cache.json"
python train_memory.py "${vit[@]}" --batch 32 --big-batch 512 > "$out/memory.json"
python train_memory.py "${vit[@]}" --batch 32 --big-batch 512 --lora-dropout 0 > "$out/memory_no_dropout.json"
tail -n +1 "$out"/*.json
