"""User-facing errors: one line that names the problem and the fix."""


class TbqError(Exception):
    """A problem with what the user asked for; the CLI prints it as one line and exits 2."""


class NumericalError(TbqError):
    """A factorization that failed even after damping; the pipeline adds the module's name before it reaches the user."""
