"""``python -m hybrid``: the command line (torchrun starts data-parallel ranks this way)."""

import sys

from hybrid.cli import main

sys.exit(main())
