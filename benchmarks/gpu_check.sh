#!/usr/bin/env bash
# The whole GPU path of gptlab in one short run, with a summary at the end. Run it first on a
# machine with CUDA (a few minutes on one GPU), and put its summary in the README's speed table:
#
#   bash benchmarks/gpu_check.sh [WORKDIR]
#
# What it runs: a tiny training in float16 (gradient scaler) and in bfloat16, one with
# compile=true, sampling and evaluation on CUDA, the gpt2 preset's tokens/s and MFU at batch
# 16 x 1024 (20 steps, compiled, bfloat16), and with 2+ GPUs ddp and fsdp over nccl (their
# final losses within 0.05) and the fsdp memory benchmark.
#
# GPT2_TOKENIZER=FOLDER: GPT-2's tokenizer files, where the hub cannot be reached (by default
# ../shared/data/gpt2-tokenizer when it is there).
# GPU_CHECK_DEVICE=cpu runs the same commands, small, on a CPU (float16 and compile skipped):
# the test suite does, to check that every command in this script is valid.
set -u
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [ "$DEVICE" = cuda ] && ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False)" >&2
    exit 2
fi
W=${1:-$(mktemp -d)}
mkdir -p "$W"
W=$(cd "$W" && pwd)  # absolute: the script moves to the repository next
cd "$(dirname "$0")/.."
# GPT-2's vocabulary: from the hub, or (machines without it) the tokenizer files beside the repo
GPT2_TOKENIZER=${GPT2_TOKENIZER:-gpt2}
if [ "$GPT2_TOKENIZER" = gpt2 ] && [ -f ../shared/data/gpt2-tokenizer/vocab.bpe ]; then
    GPT2_TOKENIZER=../shared/data/gpt2-tokenizer
fi
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
SUMMARY=()
FAILED=0

step() {  # step NAME COMMAND...: run it, log to $W/NAME.log, note ok/FAILED and seconds
    local name=$1
    shift
    local t0=$SECONDS
    if "$@" >"$W/$name.log" 2>&1; then
        SUMMARY+=("$(printf '%-16s ok      %4ds' "$name" $((SECONDS - t0)))")
    else
        SUMMARY+=("$(printf '%-16s FAILED  %4ds  (%s)' "$name" $((SECONDS - t0)) "$W/$name.log")")
        FAILED=1
    fi
}

skip() { SUMMARY+=("$(printf '%-16s skipped        (%s)' "$1" "$2")"); }

last_row() {  # the last metrics.jsonl row of a run, as "key=value ..."
    python -c "import json, sys; r = json.loads(open(sys.argv[1] + '/metrics.jsonl').read().splitlines()[-1]); print(' '.join(f'{k}={v}' for k, v in r.items() if k in ('step', 'val_loss', 'tokens_per_s', 'mfu')))" "$1"
}

printf 'To be, or not to be, that is the question.\n%.0s' {1..40} >"$W/eval.txt"
if [ "$DEVICE" = cuda ]; then
    INPUT=(--input shakespeare)  # the built-in corpus
    SPEED=(--preset gpt2 batch_size=16 block_size=1024 max_iters=20 eval_interval=10 eval_iters=2 compile=true)
    TINY=(max_iters=60 eval_interval=30 eval_iters=5)
else  # the smoke run: the same commands, small
    INPUT=(--input "$W/eval.txt")
    SPEED=(--preset tiny batch_size=2 block_size=32 max_iters=4 eval_interval=2 eval_iters=1)
    TINY=(max_iters=4 eval_interval=2 eval_iters=1 threads=1)
fi
COMMON=(--no-progress "device=$DEVICE" --preset tiny block_size=64 batch_size=8)

step prepare-char python -m gptlab prepare "${INPUT[@]}" --out "$W/char"
step prepare-gpt2 python -m gptlab prepare "${INPUT[@]}" --out "$W/gpt2" --tokenizer "$GPT2_TOKENIZER"
if [ "$DEVICE" = cuda ]; then
    step train-float16 python -m gptlab train "${COMMON[@]}" "${TINY[@]}" --data "$W/char" --out "$W/fp16" dtype=float16
    step train-compile python -m gptlab train "${COMMON[@]}" "${TINY[@]}" --data "$W/char" --out "$W/compiled" dtype=bfloat16 compile=true
    BF16=bfloat16
else
    skip train-float16 "CUDA only"
    skip train-compile "not on the CPU smoke run"
    BF16=float32
fi
step train-bfloat16 python -m gptlab train "${COMMON[@]}" "${TINY[@]}" --data "$W/char" --out "$W/bf16" "dtype=$BF16"
step sample python -m gptlab sample "$W/bf16" --device "$DEVICE" --num-samples 2 --max-new-tokens 64 --seed 1
step eval python -m gptlab eval perplexity "$W/bf16" --device "$DEVICE" --input "$W/eval.txt" --method gptlab
step speed-gpt2 python -m gptlab train "${SPEED[@]}" --no-progress "device=$DEVICE" "dtype=$BF16" --data "$W/gpt2" --out "$W/speed"
if [ "$GPUS" -ge 2 ]; then
    for mode in ddp fsdp; do
        step "torchrun-$mode" python -m torch.distributed.run --standalone --nproc_per_node=2 -m gptlab train \
            "${COMMON[@]}" "${TINY[@]}" grad_accum=2 --data "$W/char" --out "$W/$mode" dtype=bfloat16 "parallel=$mode"
    done
    step torchrun-fsdp-offload python -m torch.distributed.run --standalone --nproc_per_node=2 -m gptlab train \
        "${COMMON[@]}" "${TINY[@]}" grad_accum=2 --data "$W/char" --out "$W/offload" dtype=bfloat16 parallel=fsdp cpu_offload=true
    # the two runs' final losses (bfloat16: FSDP's mixed precision and autocast differ a little)
    step ddp-vs-fsdp python -c "import json, sys; a, b = (json.loads(open(f'$W/{m}/metrics.jsonl').read().splitlines()[-1])['val_loss'] for m in ('ddp', 'fsdp')); print(f'ddp {a:.4f} fsdp {b:.4f}'); sys.exit(abs(a - b) > 0.05)"
    step fsdp-memory python benchmarks/fsdp_memory.py
else
    skip torchrun "needs 2 GPUs, found $GPUS"
    skip fsdp-memory "needs 2 GPUs, found $GPUS"
fi

echo
echo "gpu_check summary ($W)"
python -c "import torch, gptlab; d = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'; print(f'gptlab {gptlab.__version__}, torch {torch.__version__}, {d} x {torch.cuda.device_count()}')"
printf '%s\n' "${SUMMARY[@]}"
for run in fp16 compiled bf16 speed ddp fsdp offload; do
    [ -f "$W/$run/metrics.jsonl" ] && echo "$run: $(last_row "$W/$run")"
done
[ -f "$W/eval.log" ] && echo "eval: $(tail -n 1 "$W/eval.log")"
[ -f "$W/ddp-vs-fsdp.log" ] && echo "ddp vs fsdp val loss: $(cat "$W/ddp-vs-fsdp.log")"
[ -f "$W/fsdp-memory.log" ] && sed -n '/^rank/,$p' "$W/fsdp-memory.log"
exit $FAILED
