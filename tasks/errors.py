"""User-facing errors: one line that says what to do, printed without a traceback."""


class CifrasError(Exception):
    """A problem the user must fix (bad path, corrupt file, no model yet): retrying the same
    call cannot help, so Prefect tasks do not retry it."""
