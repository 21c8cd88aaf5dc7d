"""Write depth.png: a 128x128 8-bit depth map (near = bright), a disc in front of a floor that recedes upwards.

Run it from anywhere: ``python inference/examples/make_depth.py``.
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 128
y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
depth = 40 + 120 * y  # the background gets nearer (brighter) towards the bottom of the image
disc = (x - 0.5) ** 2 + (y - 0.6) ** 2 <= 0.22**2
depth[disc] = 230 - 40 * np.hypot(x[disc] - 0.5, y[disc] - 0.6) / 0.22  # a rounded object in front
Image.fromarray(depth.round().astype(np.uint8)).save(Path(__file__).with_name("depth.png"))
