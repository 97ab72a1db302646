"""The one error type for bad user input."""


class InputError(ValueError):
    """Bad input from the user. The message names the problem and the fix, in one line.

    The command line prints it without a traceback; library users catch it as ``ValueError``.
    """
