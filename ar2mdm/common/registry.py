"""Registries: how the toolkit's extension points find their implementations.

Each extension point (samplers, tasks, probe backends, attribution methods) has a base class
whose subclasses register themselves by their `name` class attribute when they are defined
(`__init_subclass__` calls `Registry.add`). Adding one is one new class in one new file; the
command line's choices and help, the study, the evaluations and the docs read the registry, so
nothing else has to change. docs/EXTENDING.md shows one example per extension point.

    >>> from sampling import SAMPLERS
    >>> "threshold" in SAMPLERS, SAMPLERS.get("threshold").__name__
    (True, 'ThresholdSampler')
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from ar2mdm.common.errors import UserError

T = TypeVar("T")


class Registry(Mapping[str, type[T]], Generic[T]):
    """Named classes of one extension point, in the order they were defined.

    what: how messages call one ("sampler", "task", ...); error: the UserError kind raised for
    an unknown name. A class without a `name` (an abstract intermediate) is not registered; two
    different classes may not share a name.
    """

    def __init__(self, what: str, error: type[UserError] = UserError) -> None:
        self.what, self.error = what, error
        self._classes: dict[str, type[T]] = {}

    def add(self, cls: type[T]) -> type[T]:
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name:
            return cls
        known = self._classes.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise UserError(
                f"{self.what} name {name!r} is taken by {known.__module__}.{known.__qualname__}; "
                f"give {cls.__qualname__} another name."
            )
        self._classes[name] = cls  # a class defined again (a reloaded module) replaces itself
        return cls

    def remove(self, name: str) -> None:
        """Forget `name` (tests and notebooks that define throwaway classes)."""
        self._classes.pop(name, None)

    def get(self, name: str) -> type[T]:  # type: ignore[override]
        """The class called `name`; UserError listing the known names otherwise."""
        try:
            return self._classes[name]
        except KeyError:
            raise self.error(f"unknown {self.what} {name!r}; choose one of: {', '.join(self._classes)}.") from None

    def choices(self, sep: str = " | ") -> str:
        """The names, joined for help texts."""
        return sep.join(self._classes)

    def __getitem__(self, name: str) -> type[T]:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self._classes)})"
