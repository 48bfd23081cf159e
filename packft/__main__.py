import sys

from packft.cli import main

sys.exit(main())
