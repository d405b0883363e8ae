import sys

from tfopt.cli import main

sys.exit(main())
