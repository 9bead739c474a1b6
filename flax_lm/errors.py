"""The one exception type for mistakes a user can make and fix."""


class UserError(Exception):
    """A user mistake (config, paths, data, checkpoints).

    The command line prints its message as one line and exits non-zero; it never
    shows a traceback. Messages name what was wrong and what to do about it.
    """
