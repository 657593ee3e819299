"""``python -m featuredream.cli``."""

import sys

from .main import main

sys.exit(main())
