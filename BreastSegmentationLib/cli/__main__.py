"""``python -m BreastSegmentationLib.cli``: the same as the ``breastseg`` command."""

import sys

from . import main

sys.exit(main())
