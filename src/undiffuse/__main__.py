"""``python -m undiffuse``: the same as the ``undiffuse`` command."""

from .cli import main

main()
