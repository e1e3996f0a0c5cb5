"""``python -m lesionforge ...``: the CLI, e.g. under a launcher (``accelerate launch -m lesionforge ...``)."""

from lesionforge.cli import main

main()
