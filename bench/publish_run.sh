#!/usr/bin/env bash
# Copy a finished run's small files into docs/results/<name>/: config, history, metrics, LR-finder and schedule
# data, per-class table, plots, report; the epoch lines of its log as train.log. Never weights or checkpoints.
#   bash bench/publish_run.sh RUN_DIR LOG_FILE [NAME]      (NAME defaults to the run folder's name)
set -euo pipefail
run=${1:?run folder}; log=${2:?log file}; name=${3:-$(basename "$run")}
dest="docs/results/$name"
mkdir -p "$dest"
for f in config.json history.csv metrics.json lr_finder.json schedule.json per_class.json report.md report.html; do
    [ -f "$run/$f" ] && cp "$run/$f" "$dest/"
done
[ -d "$run/plots" ] && mkdir -p "$dest/plots" && cp "$run"/plots/*.png "$dest/plots/"
# The progress bar rewrites its line with \r; keep only the lines the run prints once.
tr '\r' '\n' < "$log" | grep -aE '^(lr-find:.*LRMIN|run |epoch +[0-9]+/[0-9]+ \||final|done|wrote|[0-9.]+ s wall)' > "$dest/train.log" || true
du -sh "$dest"
