"""One exception family. The CLI turns each into one line and an exit code."""


class CompactifyError(Exception):
    """Base of every error compactify raises on purpose. Exit code 1."""

    exit_code = 1


class BadInputError(CompactifyError):
    """The user gave something we cannot work with (path, checkpoint, arch, option). Exit code 2."""

    exit_code = 2


class MissingRuntimeError(BadInputError):
    """A runtime or device the command needs is not installed or not present. Exit code 2."""


class NotContractibleError(CompactifyError):
    """A region cannot be rewritten in the requested form."""


class VerificationError(CompactifyError):
    """Outputs did not match within tolerance. Exit code 1."""
