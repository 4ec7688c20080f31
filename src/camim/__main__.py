import sys

from camim.cli import main

sys.exit(main())
