"""mailer: a daily markdown post in, one newsletter per subscriber out, each delivered exactly once."""

__version__ = "0.1.0"
# the stored list (`mailer subscribers`, `send --list`) a command uses when none is named; here, not in
# stored.py, so that `mailer --help` can show it without loading the record
DEFAULT_LIST = "main"
