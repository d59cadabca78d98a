"""`python -m meshlb` runs the CLI (the tests use it to start real processes)."""

from meshlb.cli import main

main()
