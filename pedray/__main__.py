"""Entry point of `python -m pedray`."""

import sys

from pedray.cli import main

if __name__ == "__main__":
    sys.exit(main())
