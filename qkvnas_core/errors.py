"""The one error type for bad user input; the CLI turns it into one line and exit code 2."""


class UsageError(ValueError):
    """Bad input from a user: the message names the value and what was expected."""
