import sys

from ocspproxy.cli import main

sys.exit(main())
