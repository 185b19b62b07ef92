import sys

from sessionctl.cli import main

sys.exit(main())
