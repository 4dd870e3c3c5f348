#!/usr/bin/env bash
# Makes docs/img/heatmap-example.png: a localisation set (real textile images, real defect crops
# pasted, seed 0), a patch-mode bundle fitted on its train/good with --view full, and
# `dn2 score --maps` on three of its test images (an object, a texture, a flawed-textile paste)
# put side by side. Usage: docs/img/make-heatmap-example.sh [MODEL.onnx] (default: exports
# efficientnet_lite0 448 px with --patches into the work folder).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${DN2_WORK:-$(mktemp -d)}
model=${1:-$work/model.onnx}
[ -f "$model" ] || dn2 export --arch efficientnet_lite0 --input-size 448 --patches --output "$model"
python -m dn2.tools.eval.locset "$work/loc" --train 100 --good 10 --per-defect 10 --seed 0
dn2 fit "$model" "$work/loc/train/good" --output "$work/bundle" --view full --threads 2
dn2 score "$work/bundle" "$work/loc/test/object/object_001.jpg" \
  "$work/loc/test/texture/texture_001.jpg" "$work/loc/test/textile/textile_001.jpg" \
  --json --maps "$work/maps" --threads 2
python - "$work" "$here/heatmap-example.png" <<'PY'
import sys, cv2, numpy as np
w, out = sys.argv[1], sys.argv[2]
names = ["object_001", "texture_001", "textile_001"]
tiles = []
for n in names:
    kind = n.split("_")[0]
    raw = cv2.imread(f"{w}/loc/test/{kind}/{n}.jpg")
    mask = cv2.imread(f"{w}/loc/ground_truth/{kind}/{n}_mask.png", 0)
    edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    raw[edge > 0] = (0, 255, 255)  # the pasted region's outline (ground truth) in yellow
    tiles.append(np.vstack([raw, cv2.imread(f"{w}/maps/{n}.png")]))
cv2.imwrite(out, np.hstack(tiles))
print(out)
PY
