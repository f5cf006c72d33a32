"""``python -m flm.cli``."""

import sys

from flm.cli import main

sys.exit(main())
