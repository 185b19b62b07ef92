"""``python -m sessiond``: the daemon, as the ``sessiond`` command runs it."""

import sys

from sessiond.daemon import main

sys.exit(main())
