"""`python -m teachlab` is the `teachlab` command."""

from teachlab.cli import main

main()
