#!/usr/bin/env bash
# Regenerate this folder (README.md, config.json, model.safetensors, retrieval.png, gsp_weights.png) with
# today's writer: the default run and its export, as docs/hub.md, "Publish your own", does it,
#
#     python examples/train.py --output <tmp>/train            # the default collage run, a minute or two
#     timm-gsp export <tmp>/train <tmp>/train/hub
#
# then the exported folder replaces this one's files (this script stays). The run goes to a temporary
# folder, so output/train is left alone; the card names no local path, so where it ran does not show.
#
#     bash examples/model_card/regenerate.sh          # from anywhere, in the environment timm-gsp is installed in
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$repo"
python examples/train.py --output "$work/train"
timm-gsp export "$work/train" "$work/train/hub"
find "$here" -maxdepth 1 -type f ! -name regenerate.sh -delete
cp "$work/train/hub/"* "$here/"
ls -l "$here"
