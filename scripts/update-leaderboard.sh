#!/usr/bin/env bash
# Regenerate the committed leaderboard of the embedded suite (synthfundus) from a fresh run:
#   reports/leaderboard.json        metric rows, the baseline that CI gates on
#   reports/leaderboard.md          the human boards (headline ACA per protocol)
#   reports/synthfundus-report.html the full HTML report of the same run
#
#   bash scripts/update-leaderboard.sh [extra `fundbench run` options, e.g. --device cuda]
#
# Takes about 5 minutes on 2 CPU cores with a warm cache (keepfit_v2 trains its tiny
# preset first on a cold one; both models fine-tune on synth_dr and synth_glaucoma). The run
# goes to $OUT (default fundbench-results/leaderboard-run, git-ignored), which is emptied
# first so no cell is reused from an older fundbench. Review `git diff reports/` and commit.
set -euo pipefail
cd "$(dirname "$0")/.."
FUNDBENCH=${FUNDBENCH:-.venv/bin/fundbench}
OUT=${OUT:-fundbench-results/leaderboard-run}

if [ -e "$OUT" ]; then
  if [ -n "$(ls -A "$OUT")" ] && [ ! -d "$OUT/records" ]; then
    echo "error: $OUT exists and is not a fundbench results folder; set OUT=... elsewhere" >&2
    exit 2
  fi
  rm -rf "$OUT"
fi

"$FUNDBENCH" run --model random_init --model keepfit_v2 --out "$OUT" "$@"
"$FUNDBENCH" leaderboard "$OUT" --format json -o reports/leaderboard.json
"$FUNDBENCH" leaderboard "$OUT" --format markdown -o reports/leaderboard.md
"$FUNDBENCH" report "$OUT" -o reports/synthfundus-report.html
# The new numbers must pass against themselves; this also checks the JSON reads back.
"$FUNDBENCH" leaderboard "$OUT" --baseline reports/leaderboard.json --max-drop 0 \
  -o "$OUT/leaderboard-check.md"
git --no-pager diff --stat -- reports/ 2>/dev/null || true
