"""pandas, imported only when a DataFrame is asked for.

pandas is an optional extra (``pip install 'sharded-queue[pandas]'``): a service that
only registers and performs requests does not carry it. `Queue.stats`, `Queue.workers`,
`Queue.schedules`, `Queue.peek`, `Queue.deferred` and `Worker.trace` return DataFrames
and need it; without it they raise an `ImportError` that names the extra. The CLI's
``stats``, ``check`` and ``dead-letters`` work without it.
"""

from __future__ import annotations


def require_pandas(what: str) -> None:
    """Check that pandas can be imported, for ``what`` (a method that returns a DataFrame).

    Raises:
        ImportError: pandas is not installed; the message names the extra to install.
    """
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{what} returns a pandas DataFrame and pandas is not installed: pip install 'sharded-queue[pandas]'"
        ) from None
