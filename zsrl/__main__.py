"""``python -m zsrl`` (and ``torchrun … -m zsrl train …``): the command line."""

import sys

from zsrl.cli import main

sys.exit(main())
