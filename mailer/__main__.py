"""`python -m mailer` runs the CLI."""

from .cli import main

main()
