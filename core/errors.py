"""The errors Stamen raises on bad input.

Each is a ``ValueError`` so that callers who do not know Stamen still catch
them, and each message is one line that says what was wrong and what is allowed.
"""


class StamenError(Exception):
    """Base class of every error Stamen raises on purpose."""


class ConfigError(StamenError, ValueError):
    """A configuration value is missing, malformed or out of range."""


class DataError(StamenError, ValueError):
    """A dataset file is missing or malformed, or a partition is impossible."""


class InvalidUpdate(StamenError, ValueError):
    """Encoded bytes (an update or a model) failed validation while decoding."""


class ShapeMismatch(InvalidUpdate):
    """A tensor's shape is not the one the receiver's own model has.

    ``expected`` is the receiver's, ``got`` the sender's: a device decoding the
    server's model expects its own data's shapes, the server its model's.
    """

    def __init__(self, tensor: str, expected: tuple[int, ...], got: tuple[int, ...]) -> None:
        self.tensor, self.expected, self.got = tensor, expected, got
        super().__init__(f"tensor {tensor!r}: expected shape {expected}, got {got}")


class ArtifactError(StamenError, ValueError):
    """An exported artifact or its manifest is missing, tampered with or does not verify."""
