"""One exception type for mistakes a user can fix (bad flag, missing file, broken image).

The CLI prints these as a single `error: ...` line and exits non-zero; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
