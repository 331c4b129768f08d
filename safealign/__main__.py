import sys

from safealign.cli import main

sys.exit(main())
