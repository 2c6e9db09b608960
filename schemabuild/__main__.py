"""`python -m schemabuild ...` and `torchrun --nproc_per_node 2 -m schemabuild train <task> ...`: the command line."""

from schemabuild.cli import main

if __name__ == "__main__":
    main(prog_name="schemabuild")
