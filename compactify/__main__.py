"""``python -m compactify``: the same command as ``compactify``."""

from compactify.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    main(prog_name="compactify")
