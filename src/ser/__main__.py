import sys

from ser.cli import main

sys.exit(main())
