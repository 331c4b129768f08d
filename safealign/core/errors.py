"""The error every stage raises for a reason the user can act on: printed as one message, no traceback."""


class StageError(RuntimeError):
    pass
