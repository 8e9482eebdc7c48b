import sys

from clippo.cli import main

sys.exit(main())
