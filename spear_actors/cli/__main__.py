"""``python -m spear_actors.cli``."""

from . import main

main()
