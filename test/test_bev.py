"""Bird's-eye view orientation: forward is up, left is left."""

import numpy as np

from monoocc_ros.bev import bev_image
from monoocc_ros.classes import CLASS_COLORS_RGB


def test_bev_orientation_and_top_voxel():
    g = np.zeros((256, 256, 32), np.uint8)
    g[200:210, 0:10, 3] = 1  # far ahead (x high), on the right (y low)
    g[200:210, 0:10, 1] = 9  # road below the car: hidden from above
    bev = bev_image(g, scale=1)
    ys, xs = np.nonzero((bev != 255).any(axis=2))
    assert (ys.min(), ys.max()) == (46, 55)  # near the top
    assert (xs.min(), xs.max()) == (246, 255)  # on the right
    assert (bev[50, 250] == CLASS_COLORS_RGB[1]).all()
    assert bev_image(g, scale=2).shape == (512, 512, 3)
