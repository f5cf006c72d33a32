"""``python -m bench.backend``: the fake model server's fast mode, ``tests/fakes/fast.py``."""

import sys

from tests.fakes.fast import main

if __name__ == "__main__":
    main(sys.argv[1:])
