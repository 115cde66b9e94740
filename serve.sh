#!/usr/bin/env bash
# One command to set up and run the service locally.
#
#   ./serve.sh [--variant NAME] [--port N]                    bake the real weights (needs network) and serve them
#   ./serve.sh --demo [--variant ...] [--port N]              serve a tiny RANDOM bundle offline (meaningless vectors)
#                                                             and a demo index of generated pictures
#   ./serve.sh [--demo] --images DIR                          ...and search your own folder of images instead
#
# The playground opens at http://127.0.0.1:PORT/ui.
# Real weights are baked once into $MODEL_DIR (default ./model_bundles); demo bundles go to a separate
# folder (./model_bundles-demo) so that a demo bundle can never be mistaken for real weights.
set -euo pipefail
cd "$(dirname "$0")"

variant=${MODEL_VARIANT:-english}
indexes=${INDEXES_DIR:-./indexes-local}  # where --demo and --images keep the indexes they build
log=.serve.log                             # what the set-up steps printed (shown only if one fails)
port=${PORT:-8080}
demo=0
images=""
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --demo) demo=1; shift ;;
    --images) images=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "serve.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

source scripts/venv.sh

# Run a set-up step with its output (progress bars, libraries' notices) kept in $log; shown if it fails.
quietly() {
  if ! "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "serve.sh: '$*' failed (its whole output is in $log)" >&2
    exit 1
  fi
}

if [ "$demo" = 1 ]; then
  model_dir=${MODEL_DIR:-./model_bundles-demo}
  if [ ! -f "$model_dir/$variant/manifest.json" ]; then
    echo "serve.sh: making a tiny $variant bundle with random weights in $model_dir..." >&2
    quietly python -m models.tiny --variant "$variant" --out "$model_dir" --size tiny
  fi
  cat >&2 <<EOF
################################################################################
# DEMO MODE: serving a tiny bundle with RANDOM weights from $model_dir.
# The API, shapes and errors are real; the embeddings mean nothing.
# For real weights run ./serve.sh without --demo (needs network to bake once).
################################################################################
EOF
else
  model_dir=${MODEL_DIR:-./model_bundles}
  if [ ! -f "$model_dir/$variant/manifest.json" ]; then
    echo "serve.sh: baking the $variant weights into $model_dir (one-time download)..." >&2
    # Every file is pinned in models/registry.py (sha256 or commit): a download that differs stops the bake.
    if ! python -m models.bake --variant "$variant" --out "$model_dir"; then
      echo "serve.sh: baking failed (the error is above: no network to the model hosts, or a file that" >&2
      echo "          differs from its pin in models/registry.py)." >&2
      echo "          For an offline demo with random weights run: ./serve.sh --demo" >&2
      exit 1
    fi
  fi
fi

# An index to search in the playground: the folder given, or (demo) generated pictures. Built once per folder
# and model into ./indexes-local (versions are immutable: a changed folder needs rm -r of its index).
if [ -z "${INDEX_DIR:-}" ] && { [ -n "$images" ] || [ "$demo" = 1 ]; }; then
  if [ -z "$images" ]; then
    images=$indexes/demo-pictures
    [ -f "$images/items.csv" ] || quietly python -m batch.demo_images --output "$images"
    rows=$images/items.csv
  else
    rows=$images
  fi
  weights=$(python -c "import sys; from models.bundle import model_identity as m
print(m(sys.argv[1], sys.argv[2])['weights'].split(':')[-1][:12])" "$model_dir" "$variant")
  INDEX_DIR=$indexes/$(basename "$(realpath "$images")")-$variant-$weights/v1
  if [ ! -f "$INDEX_DIR/manifest.json" ]; then
    echo "serve.sh: indexing $rows into $INDEX_DIR (with thumbnails)..." >&2
    quietly python -m batch index build --input "$rows" --output "$INDEX_DIR" --local --model-dir "$model_dir" \
      --model "$variant" --thumbnails
  fi
  export INDEX_DIR
fi

export MODEL_DIR=$model_dir MODEL_VARIANT=$variant PORT=$port
echo "serve.sh: serving $variant from $model_dir on http://127.0.0.1:$port (playground: /ui)" >&2
exec gunicorn -c infra/gunicorn.conf.py handler.wsgi:app
