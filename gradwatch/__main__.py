"""``python -m gradwatch report LOGDIR`` (see :mod:`gradwatch.cli`)."""

import sys

from gradwatch.cli import main

sys.exit(main())
