"""``python -m amulet_lab``: the same as the ``amulet-lab`` command."""

import sys

from amulet_lab.cli import main

sys.exit(main())
