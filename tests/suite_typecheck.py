"""The run-time type checker `make typecheck` applies to every package (the Makefile's
`--jaxtyping-packages=...,suite_typecheck.check`; tests/ is on pytest's pythonpath): beartype,
with PEP 484's implicit numeric tower (an `int` is accepted where a `float` is annotated, as
Python callers expect).

The default suite runs without the checks (`make test`, fast); `make typecheck` runs it with them,
but for the tests marked e2e (pyproject's markers), and CI runs both. conftest imports this module
first either way: beartype must load before a test's libraries add unhashable attributes to
`object` (it hashes `object.__dict__`'s callables when first imported).
"""

import contextlib
from collections.abc import Iterator

import jaxtyping
from beartype import BeartypeConf, beartype

check = beartype(conf=BeartypeConf(is_pep484_tower=True))


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Switch the run-time checks off inside the block: for a test that passes a wrong type on
    purpose to assert the UserError a user gets (users run without the checks), or one that
    asserts the global `random` state is untouched (beartype samples containers with it)."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
