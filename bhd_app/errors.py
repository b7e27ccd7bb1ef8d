"""The one exception type for problems the user can fix (bad input, bad options)."""


class BHDInputError(Exception):
    """A user-facing problem: the CLI prints it as one line and exits non-zero.

    The message names the file (or option) and says what to do.
    """
