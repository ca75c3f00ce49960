"""`python -m distill ...` and `torchrun --nproc_per_node K -m distill train ...`: the
`toonify-fast distill` commands, entered at the top of the command line (runtime.cli) so their
errors print the same way."""
import sys

from runtime.cli import main

main(["distill", *sys.argv[1:]])
