"""`python -m ranvier` is the `ranvier` command."""

import sys

from ranvier.cli import main

sys.exit(main())
