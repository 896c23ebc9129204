"""The one error type for bad user input; the CLI turns it into one line and exit code 2."""


class UsageError(ValueError):
    """Bad input from a user: the message names the value and what was expected."""


class UserCodeError(UsageError):
    """The user's own code raised (a space file at import): one line on the command line, like any bad input; its
    exception, the `__cause__`, is what the Python API raises, traceback and all."""
