import sys

from dreamctl.cli import main

sys.exit(main())
