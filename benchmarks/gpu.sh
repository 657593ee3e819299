#!/usr/bin/env bash
# The GPU measurements of issue 7, to run on a machine with one CUDA GPU, from the repository root, with
# the project installed (pip install -e '.[dev]'; optionally '.[flash]'). NOT RUN YET: no GPU was lent to
# the session that wrote this, so benchmarks/README.md has no GPU figures. Each command prints its table;
# each writes its JSON (with the GPU's name and the torch / CUDA versions); quote them in benchmarks/README.md ("GPU").
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)"

# 1. the whole test suite on the GPU machine (tests build tiny models on CPU; the evaluator paths are the same)
python -m pytest -q

# 2. optimized evaluator vs the seed-style reference, default model, bf16 and fp32
#    (% of peak from the datasheet figure for torch.cuda.get_device_name(): benchmarks/common.py, DEVICE_PEAK_TFLOPS;
#    a GPU not in that table gets no % of peak)
python benchmarks/throughput.py --device cuda --dtype bfloat16 --children 128 --tokens 16 --iters 10 \
    --out benchmarks/throughput_gpu_bf16.json
python benchmarks/throughput.py --device cuda --dtype float32 --children 128 --tokens 16 --iters 10 \
    --out benchmarks/throughput_gpu_fp32.json

# 3. prefix cache on the GPU: which per-pass overhead (in child tokens) pays? The default for cuda is 2048,
#    which makes 128 x 16 batches fall back to the plain path; set BUCKET_OVERHEAD["cuda"] in
#    src/featuredream/engine/prefix_cache.py from the best row here (or turn prefix_cache off on cuda).
python benchmarks/prefix_cache.py --device cuda --dtype bfloat16 --children 128 --tokens 16 --iters 10 \
    --overheads 0,64,256,1024,2048 --out benchmarks/prefix_cache_gpu.json

# 3b. K features per run on the GPU (128 children per feature by default there)
python benchmarks/multi_feature.py --device cuda --ks 1,8,32 --iters 10 --single --out benchmarks/multi_feature_gpu.json

# 4. Gemma-2-2B's shape with random weights, 128 children x 16 tokens (eager attention: softcapping)
python benchmarks/scaling.py --device cuda --dtype bfloat16 --models gemma2-2b \
    --children 128 --lengths 16 --base-children 128 --base-length 16 --reps 5 --out benchmarks/scaling_gemma2_gpu.json

# 5. the scaling table on the GPU (three model sizes)
python benchmarks/scaling.py --device cuda --dtype bfloat16 --models default,smollm2-360m,gemma2-2b \
    --children 16,32,64,128 --lengths 8,16,32,64 --base-children 128 --base-length 16 --reps 5 \
    --out benchmarks/scaling_gpu.json
