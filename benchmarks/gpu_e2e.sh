#!/usr/bin/env bash
# The user's path on a GPU, end to end, through the CLI (what `gpu.sh` does not run):
#
#     bash benchmarks/gpu_e2e.sh WORKDIR
#
# prepare-data (synthetic, 64 px) -> train the `conservative` recipe with its rectification term from
# epoch 0 (lambda non-zero from epoch 1) -> the same run stopped halfway and resumed -> the straight
# run once more -> sample (DDIM-50, bf16) -> evaluate (the weight-free metrics). It prints the
# largest weight difference from the straight run of the resumed run and of the repeat (CUDA kernels
# are not bit-deterministic, so the repeat's is the floor to read the resumed run's against) and each
# command's wall time.
# Everything is written under WORKDIR; nothing is downloaded.
#
# Environment: DEVICE (default cuda), E2E_ARGS="--set ..." (a smaller network for a CPU smoke test).
set -euo pipefail
work=${1:?usage: bash benchmarks/gpu_e2e.sh WORKDIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
read -r -a extra <<<"${E2E_ARGS:-}"
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$work"

dc() {  # dc ARGS...: one dreamctl command, timed
    local start=$SECONDS
    echo "== dreamctl $*"
    "$py" -m dreamctl "$@"
    echo "== $1: $((SECONDS - start)) s"
}

# 1,024 faces, 922 of them in the training split, of which the first 896 are used: 7 steps an epoch
# at batch 128, so 40 steps reach a sixth epoch; the conservative term (start_epoch 0, ramp over
# 2 epochs) runs from the first, its lambda non-zero from the second.
train=(--recipe conservative --data "$work/data" --device "$device"
       --set data.limit=896 --set loss.start_epoch=0 --set loss.ramp_epochs=2
       --set train.checkpoint_every=20 --set train.sample_every=1000 --set train.log_every=10 "${extra[@]}")
dc prepare-data --source synthetic --count 1024 --resolution 64 --out "$work/data"
dc train "${train[@]}" --run-dir "$work/straight" --set train.max_steps=40
dc train "${train[@]}" --run-dir "$work/resumed" --set train.max_steps=20
dc resume "$work/resumed" --set train.max_steps=40 --device "$device"
# The same run again from scratch: how far two identical runs drift on this device (cuDNN picks its
# algorithms per process, some with atomics), the floor against which to read the resumed run's drift.
dc train "${train[@]}" --run-dir "$work/again" --set train.max_steps=40
"$py" - "$work" <<'EOF2'
import sys
from pathlib import Path
from dreamctl.training.checkpoints import checkpoint_path, load_checkpoint

work = Path(sys.argv[1])
ref = load_checkpoint(checkpoint_path(work / "straight" / "checkpoints", 40))
for run in ("resumed", "again"):
    other = load_checkpoint(checkpoint_path(work / run / "checkpoints", 40))
    for part in ("model", "ema"):
        diff = max((ref[part][k].float() - other[part][k].float()).abs().max().item() for k in ref[part])
        print(f"{run} vs straight, step 40, {part}: max abs weight difference {diff:.3g}")
EOF2
tail -n 2 "$work/straight/metrics.jsonl"
dc sample "$work/straight" --num 256 --grid "$work/grid.png" --device "$device"
dc evaluate "$work/straight" --num 256 --ref train --metrics swd,pixel_fd --device "$device"
