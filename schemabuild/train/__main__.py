"""`python -m schemabuild.train <task> [flags]` (what torchrun / accelerate launch run): the `train` command."""

import sys

from schemabuild.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="schemabuild train")
