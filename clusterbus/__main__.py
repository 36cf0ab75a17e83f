"""``python -m clusterbus``: the command line."""

import sys

from plugins.cli import main

if __name__ == "__main__":
    sys.exit(main())
