"""Exceptions shared across fastbind."""


class UserError(ValueError):
    """A problem with the user's input (a file, a key, a config value).

    The CLI prints its message as a single line and exits with status 2; library code
    can catch it as a ``ValueError``.
    """
