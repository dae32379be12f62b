"""Plugins: extension modules outside the toolkit that add samplers, tasks, backends or methods.

A plugin is an ordinary Python module whose classes subclass an extension point's base class
(`ar2mdm.sampling.Sampler`, `ar2mdm.tasks.BaseTask`, `probe.backends.Backend`,
`analyses.attribution.AttributionMethod`); defining them registers them (`ar2mdm.common.registry`).
In a notebook or script, importing the module is all it takes. The command line imports, before
it builds its choices and help:

- the modules named in the environment variable `AR2MDM_PLUGINS`: comma-separated dotted module
  names (importable from `sys.path`) or paths to `.py` files, e.g.
  `AR2MDM_PLUGINS=my_samplers.py,mylab.ar2mdm_tasks ar2mdm sample --sampler random-order ...`;
- the modules that installed packages declare under the entry-point group `ar2mdm.plugins`
  (`[project.entry-points."ar2mdm.plugins"] mylab = "mylab.ar2mdm_tasks"` in their pyproject).

docs/EXTENDING.md has one tested example per extension point.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from ar2mdm.common.errors import UserError

ENV = "AR2MDM_PLUGINS"
GROUP = "ar2mdm.plugins"


def _import_file(path: Path) -> ModuleType:
    """Import a .py file as module `ar2mdm_plugin_<stem>` (once; a second call returns it)."""
    name = f"ar2mdm_plugin_{path.stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{ENV}: {path} cannot be imported as a Python module; name a .py file or a module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import(item: str) -> ModuleType:
    path = Path(item).expanduser()
    if item.endswith(".py") or os.sep in item:
        if not path.is_file():
            raise UserError(f"{ENV} names {item!r}, which is no file; give the path of a .py file or a module name.")
        return _import_file(path.resolve())
    return importlib.import_module(item)


def _failed(item: str, err: BaseException) -> UserError:
    if isinstance(err, UserError):
        return UserError(f"plugin {item!r}: {err}")
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    at = f" ({where.filename}:{where.lineno})" if where else ""
    return UserError(
        f"plugin {item!r} failed to import: {type(err).__name__}: {err}{at}. Fix the module, or "
        f"leave it out of {ENV} / uninstall the package that declares it under {GROUP!r}."
    )


def load_plugins(spec: str | None = None, *, entry_points: bool = True) -> list[str]:
    """Import the plugin modules; return their module names, in import order.

    spec: comma-separated module names or .py paths (default: the `AR2MDM_PLUGINS` variable;
    empty items are ignored). entry_points: also import the modules of the `ar2mdm.plugins`
    entry-point group. Importing a module twice is harmless (a class defined again replaces its
    registration). Raises UserError naming the plugin when one cannot be found or fails while
    it is imported (the original error and its file:line in the message).
    """
    spec = os.environ.get(ENV, "") if spec is None else spec
    items: list[tuple[str, object]] = [(item.strip(), item.strip()) for item in spec.split(",") if item.strip()]
    if entry_points:
        items += [(f"{ep.name} = {ep.value}", ep) for ep in importlib.metadata.entry_points(group=GROUP)]
    loaded = []
    for label, what in items:
        try:
            module = _import(what) if isinstance(what, str) else what.load()  # type: ignore[attr-defined]
        except ModuleNotFoundError as err:
            if isinstance(what, str) and err.name == what.split(".")[0]:
                raise UserError(
                    f"{ENV} names module {what!r}, which is not importable from here; give its path "
                    f"(my_plugin.py) or put its folder on PYTHONPATH."
                ) from None
            raise _failed(label, err) from None
        except Exception as err:
            raise _failed(label, err) from None
        loaded.append(getattr(module, "__name__", label))
    return loaded
