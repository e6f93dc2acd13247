"""``python -m qsal``: the same as the ``qsal`` command."""

import sys

from qsal.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
