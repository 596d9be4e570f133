"""`python -m multidistill SUBCOMMAND ...`: the `multidistill` command (`console`)."""

import sys

from multidistill import console

if __name__ == "__main__":
    sys.exit(console.main())
