import sys

from ogsd.cli import main

sys.exit(main())
