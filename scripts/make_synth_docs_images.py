"""Regenerates docs/img/synth_*.png from the synthetic benchmark (`make data`).

.venv/bin/python scripts/make_synth_docs_images.py data/benchmark

Each picture: the camera image (2/3 size) above the frame's voxel ground truth seen from above
(forward is up, the car at the bottom centre; each column shows its highest valid occupied
voxel's class in the SemanticKITTI palette; white: valid and empty; grey: nothing observed).
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from monoocc_ros.bev import bev_image, legend_image, side_by_side
from monoocc_ros.data.dataset import load_voxel_target

# (name, sequence, frame): chosen by looking at the benchmark's worlds (seed 0 training worlds).
PICTURES = (("curve", "06", 40), ("intersection", "05", 90))

root = Path(sys.argv[1])
out = Path(__file__).resolve().parents[1] / "docs" / "img"
for name, seq, frame in PICTURES:
    folder = root / "sequences" / seq
    img = Image.open(folder / "image_2" / f"{frame:06d}.png")
    img = np.asarray(img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.BILINEAR))
    target, _ = load_voxel_target(folder / "voxels" / f"{frame:06d}")
    bev = side_by_side(bev_image(target, 2), legend_image(24))  # grey: columns with nothing valid
    width = max(img.shape[1], bev.shape[1])
    canvas = np.full((img.shape[0] + 8 + bev.shape[0], width, 3), 255, np.uint8)
    canvas[: img.shape[0], : img.shape[1]] = img
    canvas[img.shape[0] + 8 :, : bev.shape[1]] = bev
    Image.fromarray(canvas).save(out / f"synth_{name}.png", optimize=True)
    print(f"wrote {out / f'synth_{name}.png'}")
