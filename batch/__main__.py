"""`python -m batch` = the clipserve-batch console script."""

import sys

from batch.cli import main

sys.exit(main())
