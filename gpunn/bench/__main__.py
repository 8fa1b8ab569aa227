"""``python -m gpunn.bench [flags]``: the same as ``gpunn bench``."""

import sys

from . import _standalone

sys.exit(_standalone())
