"""The one exception type that bad input raises."""


class InputError(ValueError):
    """Bad input: the message names what was wrong and how to fix it."""
