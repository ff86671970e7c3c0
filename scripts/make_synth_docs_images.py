"""Regenerates docs/img/synth_*.png from a `monoocc synth --seed 0` dataset (seq 00, frame 2).

.venv/bin/monoocc synth --out /tmp/s --frames 20 --seed 0
.venv/bin/python scripts/make_synth_docs_images.py /tmp/s
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from monoocc_ros.classes import CLASS_COLORS_RGB, CLASS_NAMES, raw_to_train
from monoocc_ros.data import formats as F
from monoocc_ros.viz import bev_image, side_by_side

FRAME = "000002"
seq = Path(sys.argv[1]) / "sequences" / "00"
out = Path(__file__).resolve().parents[1] / "docs" / "img"
img = Image.open(seq / "image_2" / f"{FRAME}.png")
img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.BILINEAR).save(out / "synth_image.png", optimize=True)
labels = raw_to_train(F.read_voxel_labels(seq / "voxels" / f"{FRAME}.label"))
legend = Image.new("RGB", (150, 20 * 19 + 4), "white")
draw = ImageDraw.Draw(legend)
for i in range(1, 20):
    y = 4 + (i - 1) * 20
    draw.rectangle([4, y, 20, y + 14], fill=tuple(int(c) for c in CLASS_COLORS_RGB[i]))
    draw.text((26, y + 1), CLASS_NAMES[i], fill="black")
Image.fromarray(side_by_side(bev_image(labels, 1), np.array(legend))).save(out / "synth_bev.png", optimize=True)
