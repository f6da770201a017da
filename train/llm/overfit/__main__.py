"""`python -m train.llm.overfit`: the overfitting queue's command line (train/llm/overfit/cli.py)."""

import sys

from train.llm.overfit.cli import main

if __name__ == "__main__":
    sys.exit(main())
