"""Regenerates docs/img/synth_*.png from a `monoocc synth --seed 0` dataset (seq 00, frame 2).

.venv/bin/monoocc synth --out /tmp/s --frames 20 --seed 0
.venv/bin/python scripts/make_synth_docs_images.py /tmp/s
"""

import sys
from pathlib import Path

from PIL import Image

from monoocc_ros.classes import raw_to_train
from monoocc_ros.data import formats as F
from monoocc_ros.viz import bev_image, legend_image, side_by_side

FRAME = "000002"
seq = Path(sys.argv[1]) / "sequences" / "00"
out = Path(__file__).resolve().parents[1] / "docs" / "img"
img = Image.open(seq / "image_2" / f"{FRAME}.png")
img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.BILINEAR).save(out / "synth_image.png", optimize=True)
labels = raw_to_train(F.read_voxel_labels(seq / "voxels" / f"{FRAME}.label"))
Image.fromarray(side_by_side(bev_image(labels, 1), legend_image(20))).save(out / "synth_bev.png", optimize=True)
