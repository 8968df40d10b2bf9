"""`python -m engine.cli ...`: the same as `aivh ...`."""
import sys

from engine.cli import main

sys.exit(main())
