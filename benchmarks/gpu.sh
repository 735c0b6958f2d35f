#!/usr/bin/env bash
# The whole GPU benchmark on one GPU, offline, in under 8 minutes:
#
#     bash benchmarks/gpu.sh OUTDIR
#
# Writes OUTDIR/bench-<section>-cuda.json for each of its six sections and OUTDIR/bench.log
# (everything printed: the machine, each section, the summary with the speed targets): seven
# files, so that the device tool's limit of eight brings them all back, with one to spare.
# Needs python3 with a CUDA torch, torchvision, h5py, numpy, scipy, pillow, typer, rich and pyyaml. pydantic is
# installed from a folder of wheels when it is missing: $WHEELS, else wheels/ or .whl/ in the
# repository (see docs/benchmarks.md for how to fetch them). Nothing is downloaded.
#
# Each section runs in its own process under its own time limit, so one that fails or
# overruns (a slow torch.compile) costs only its own figures, and the log keeps how far it got
# (each first step and round as it ends); no section runs past the 450 s budget, and one is
# skipped when too little of it is left.
#
# Environment: PYTHON (default python3); DEVICE=cpu and BENCH_ARGS="--set ..." make a smoke
# test of this script on a machine without a GPU (the figures are then not GPU figures).
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
read -r -a extra <<<"${BENCH_ARGS:-}"
total_s=450  # from the script's start (SECONDS), all sections included; the rest of the 8 minutes is the
# last section's 5 s of grace after its limit and the summary

mkdir -p "$out" && out=$(cd "$out" && pwd)
log=$out/bench.log
: >"$log"
cd "$repo" || exit 2
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

if ! "$py" -c "import pydantic" 2>/dev/null; then
    for wheels in "${WHEELS:-}" wheels .whl; do
        if [ -n "$wheels" ] && [ -d "$wheels" ]; then
            # Into a folder of its own: a system Python may refuse installs (PEP 668), and nothing
            # already installed is touched.
            site=$(mktemp -d)
            trap 'rm -rf "$site"' EXIT
            echo "installing pydantic from $wheels into $site" | tee -a "$log"
            "$py" -m pip install -q --no-index --no-compile --find-links "$wheels" --target "$site" pydantic 2>&1 \
                | tee -a "$log"
            export PYTHONPATH=$PYTHONPATH:$site  # after the repository, so dreamctl comes from here
            break
        fi
    done
fi
if ! "$py" -c "import pydantic, dreamctl.cli" 2>>"$log"; then
    echo "cannot import dreamctl's CLI (see $log): pydantic missing? put its wheels in wheels/ or set WHEELS" >&2
    exit 2
fi

{
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    if [ "$device" = cuda ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
    fi
    "$py" -c "import torch, platform, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'python', platform.python_version(), 'cpus', os.cpu_count())"
} 2>&1 | tee -a "$log"

files=()
section() {  # section NAME LIMIT_S ARGS... : one `dreamctl bench` under a time limit
    local name=$1 limit=$2
    shift 2
    local left=$((total_s - SECONDS))
    local file=$out/bench-$name-$device.json
    files+=("$file")
    if [ "$left" -lt 30 ]; then
        echo "== $name: skipped, only ${left}s of the time budget left" | tee -a "$log"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s): dreamctl bench $* --device $device ${extra[*]}" | tee -a "$log"
    timeout --signal=INT --kill-after=5 "$limit" \
        "$py" -m dreamctl bench "$@" --device "$device" --out "$file" "${extra[@]}" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "== $name: exit $rc (124/130: ran out of time)" | tee -a "$log"
}

# Most important first: a later section is the one cut short when time runs out, and the compiles
# are spread over sections, so a slow one costs only its own section's figures.
# Loss kinds and the naive step, eager (the recipe's settings): the targets are stated for these.
section train 100 train --no-variants --rounds 10 --warmup 3 --budget-s 40
# Sampling eager, compiled and compiled with CUDA graphs (mode reduce-overhead), batches interleaved; a
# compiled setting that fails is recorded with its error and costs the others nothing.
section sample 150 sample --sample-batches 3
# The loss kinds with train.compile: does the compiled `dream` step meet its 1.35x?
section train-compiled 170 train --no-variants --rounds 8 --warmup 2 --budget-s 25 --set train.compile=true
# The standard step with the float32 GroupNorm the UNet's replaced, against eager bf16. The other eager
# variants, fp32 and channels_last, are left to a run by hand (docs/benchmarks.md): measured on an H200
# (1.58x and 1.37x the time), and fp32's first step alone took 31 s on a fresh machine.
section variants 60 variants --only "eager bf16, float32 GroupNorm" --rounds 8 --warmup 2 --budget-s 20
# The standard step compiled against eager in one process, contiguous and channels_last: inductor leaves
# the training graph's layout as given (benchmarks/inductor_layout.py). Inductor's FX graph cache,
# filled by train-compiled, may shorten the first of the two compiles (not measured).
section variants-compile 200 variants --only "compile bf16" --only "compile bf16 channels_last" --rounds 8 \
    --warmup 2 --budget-s 25
# The loader is CPU work: last, as it says nothing about the GPU (it was measured on the H200's CPU).
section data 40 data

echo "== summary (${SECONDS}s in all)" | tee -a "$log"
"$py" -c "import sys; from dreamctl.cli.bench import print_summary; print_summary(sys.argv[1:])" "${files[@]}" \
    2>&1 | tee -a "$log"
