"""The lab's error type, shared by its modules."""


class LabError(RuntimeError):
    """The lab could not be brought up, changed or inspected; the message says why."""
