"""`python -m train.llm ...`: the same as `python -m train llm ...` (see train/llm/cli.py)."""

import sys

from train.llm.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
