"""The one exception type users see: a readable, one-line message about their input."""


class UndiffuseError(ValueError):
    """Bad input a user can fix (unknown name, malformed σ grid, shape mismatch…).

    The CLI prints ``str(err)`` as a single line instead of a traceback.
    """
