"""`python -m zoomshot ...` runs the CLI (so `torchrun -m zoomshot extract ...` works)."""
from zoomshot.cli import main

main()
