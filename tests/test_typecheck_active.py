"""`make typecheck` really checks: with `--jaxtyping-packages` given (in every pytest-xdist worker
too), a call with a wrong argument type into an ar2mdm package fails with jaxtyping's
TypeCheckError; without it (`make test`), the same call reaches ar2mdm's own code."""

from __future__ import annotations

import pytest

from ar2mdm.common.modeling import param_dtype


def test_run_time_checks_are_on_exactly_when_asked(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("jaxtyping_packages", default=None):
        from jaxtyping import TypeCheckError

        with pytest.raises(TypeCheckError):
            param_dtype("not a module")  # type: ignore[arg-type]
    else:
        with pytest.raises(AttributeError):  # unchecked: a str has no .parameters()
            param_dtype("not a module")  # type: ignore[arg-type]
