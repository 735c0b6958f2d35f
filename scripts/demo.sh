#!/usr/bin/env bash
# The demo: on two CPU cores, the whole pipeline on the built-in synthetic faces.
#   prepare 5,000 drawn 32x32 faces -> train plain DDPM (`tiny`) and the study's conservative
#   DREAM variant (`tiny-conservative`) at equal steps -> sample grids -> evaluate with the
#   weight-free metrics (and Inception ones when their weights are present) -> compare -> report.
# Settings: DEMO_STEPS (training steps per run), DEMO_EVAL (images per evaluation), DEMO_COUNT
# (faces drawn), DEMO_GRID (images in each grid), DEMO_OUT (the folder).
set -euo pipefail
OUT=${DEMO_OUT:-demo}
STEPS=${DEMO_STEPS:-600}
EVAL=${DEMO_EVAL:-200}
COUNT=${DEMO_COUNT:-5000}
GRID=${DEMO_GRID:-64}
DATA=$OUT/data
mkdir -p "$OUT"

metrics=swd,pixel_fd
if python3 -c "import sys; from dreamctl.metrics.weights import status
sys.exit(0 if status('inception-2015-12-05.pt').intact else 1)"; then metrics=$metrics,fid,kid,is; fi

[ -f "$DATA/manifest.json" ] || dreamctl prepare-data --source synthetic --count "$COUNT" --resolution 32 --out "$DATA"

for recipe in tiny tiny-conservative; do
  run=$OUT/runs/$recipe
  if [ ! -f "$run/recipe.yaml" ]; then
    dreamctl train --recipe "$recipe" --data "$DATA" --run-dir "$run" --set train.max_steps="$STEPS"
  else
    # A folder from an earlier demo: continue it to DEMO_STEPS (an interrupted run, or a larger DEMO_STEPS);
    # one that went further than DEMO_STEPS cannot be shortened.
    done_steps=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1])).get('step') or 0)" "$run/run.json")
    if [ "$done_steps" -gt "$STEPS" ]; then
      echo "error: $run already trained $done_steps steps, more than DEMO_STEPS=$STEPS; use another DEMO_OUT" >&2
      exit 2
    fi
    dreamctl resume "$run" --set train.max_steps="$STEPS"
  fi
  rm -f "$OUT/$recipe-samples.png"  # the demo's own grid, from an earlier run: sample never overwrites a file
  dreamctl sample "$run" --num "$GRID" --grid "$OUT/$recipe-samples.png"
  dreamctl evaluate "$run" --num "$EVAL" --ref train --metrics "$metrics"
done

dreamctl compare "$OUT"/runs/* --format markdown --plot "$OUT/figures" > "$OUT/compare.md"
python3 scripts/demo_report.py "$OUT" "$STEPS" "$EVAL"
echo "report: $OUT/report.md   samples: $OUT/tiny-samples.png $OUT/tiny-conservative-samples.png"
