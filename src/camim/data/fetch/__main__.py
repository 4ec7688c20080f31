"""``python -m camim.data.fetch pin FOLDER OUT``."""

import sys

from camim.data.fetch.cli import main

sys.exit(main())
