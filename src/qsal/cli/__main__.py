import sys

from qsal.cli.app import main

sys.exit(main())
