"""``python -m tunedet ...``: the ``tunedet`` command line."""

import sys

from tunedet.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
