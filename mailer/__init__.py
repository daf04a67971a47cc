"""mailer: a daily markdown post in, one newsletter per subscriber out, each delivered exactly once."""

__version__ = "0.1.0"
