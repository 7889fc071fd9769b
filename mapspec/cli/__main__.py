"""`python -m mapspec.cli`: the console command."""

from . import main

main()
