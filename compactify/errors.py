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


def one_line(text: object) -> str:
    """A message as one line, whole: its non-empty lines joined (errors are one line on stderr and in
    tables, whatever the exception text holds)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "(no message)"


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first line of prose in an exception's message, for one-line errors (cut at ``limit``
    characters; None: whole). Library errors (torch.export's above all) often open with a graph dump or
    a stack frame; those are skipped."""
    for line in str(exc).splitlines():
        text = line.strip()
        if not text or line[0].isspace() or text.startswith(("def ", "#", "File ")) or "torch.ops." in text:
            continue
        return text[:limit]
    return type(exc).__name__
