"""The sandbox's own error."""


class SandboxError(RuntimeError):
    """The sandbox could not start or was used after close()."""
