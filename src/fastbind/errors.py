"""Exceptions shared across fastbind."""


class UserError(ValueError):
    """A problem with the user's input (a file, a key, a config value).

    The CLI prints its message as a single line and exits with status 2; library code
    can catch it as a ``ValueError``.
    """


class BadSetting(UserError):
    """A config value out of range, raised by a config dataclass's ``__post_init__``.

    ``field`` is the field's name in that dataclass; the config parser reports the error under
    the key as the user typed it (``hidden=0: must be >= 1``), so a config class need not know
    where it is nested or which short key reached it::

        def __post_init__(self):
            if self.hidden < 1:
                raise BadSetting("hidden", f"must be >= 1, got {self.hidden}")
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
