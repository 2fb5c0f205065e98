"""A user's architecture module that imports a package this environment does not have."""

import no_such_dependency  # noqa: F401
