"""`python -m cifarkit` is the `cifarkit` command (and what torchrun runs: `torchrun -m cifarkit train ...`)."""

import sys

from cifarkit.cli import main

sys.exit(main())
