"""One registry type for everything pobench looks up by name: methods, tasks, judges, generation backends.

A :class:`Registry` holds three kinds of entries, listed by :meth:`Registry.available` in this order:

* **built-ins**: a table ``name -> "module:Attr"``, imported on first use, so a module that fails to
  import (a missing optional dependency, a syntax error) names itself and breaks nothing else;
* **plugins**: the entry points of the registry's group (``pobench.methods``, ``pobench.tasks``,
  ``pobench.judges``, ``pobench.backends``), value ``module:Attr``, read when asked;
* **registered**: classes added at run time with :meth:`Registry.register` (also a decorator, for
  notebooks and tests). A registered name shadows a built-in or plugin of the same name.

This is a leaf module: it imports only the standard library. ``methods`` and ``tasks`` import it,
so it must never import them (or anything else of pobench) back.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Mapping, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "RegistryError"]


class RegistryError(LookupError):
    """Unknown or unloadable name (the default error class; registries usually pass their own)."""


def _resolve(target: str) -> Any:
    """The object a ``"module:Attr"`` string names (imports the module)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names -> classes, from a built-in table, an entry-point group and run-time registrations.

    ``kind`` names one entry in messages ("method", "task", "judge", "generation backend").
    ``group`` is the entry-point group plugins use. ``base`` (optional) is the class every entry
    must subclass (``base_label`` is how messages spell it). ``error`` is the exception raised for
    unknown or broken names. Both may be given as ``"module:Attr"``, imported when first needed
    (loading or registering an entry, raising an error): listing names then never imports the
    module that defines them (``methods.base`` imports torch). ``builtins`` is the table (kept by
    reference: editing it later is seen).
    ``name_attr`` is the class attribute :meth:`register` takes the name from. ``plugins`` replaces
    the entry-point reader (a zero-argument callable returning ``name -> "module:Attr"``).
    """

    def __init__(self, kind: str, group: str, *, base: type | str | None = None, base_label: str | None = None,
                 error: type[Exception] | str = RegistryError, builtins: dict[str, str] | None = None,
                 name_attr: str = "name", plugins: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._base = base
        if base_label is None:
            base_label = (base.replace(":", ".") if isinstance(base, str) else
                          f"{base.__module__}.{base.__qualname__}" if base is not None else "")
        self.base_label = base_label
        self._error = error
        self.builtins: dict[str, str] = builtins if builtins is not None else {}
        self.name_attr = name_attr
        self.registered: dict[str, type[T]] = {}
        self._plugins = plugins

    @property
    def base(self) -> type | None:
        """The class every entry must subclass (imported on first use when given as ``"module:Attr"``)."""
        if isinstance(self._base, str):
            self._base = _resolve(self._base)
        return self._base

    @property
    def error(self) -> type[Exception]:
        """The exception raised for unknown or broken names (imported on first use when given as ``"module:Attr"``)."""
        if isinstance(self._error, str):
            self._error = _resolve(self._error)
        return self._error

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, {len(self.available())} entries)"

    # -- listing -----------------------------------------------------------------------------------
    def entry_point_targets(self) -> dict[str, str]:
        """``name -> "module:Attr"`` of the installed entry points of :attr:`group`."""
        return {ep.name: ep.value for ep in entry_points(group=self.group)}

    def plugins(self) -> dict[str, str]:
        """Plugin targets (the entry points, unless the registry was given another reader)."""
        return dict(self._plugins() if self._plugins is not None else self.entry_point_targets())

    def available(self) -> list[str]:
        """Every name: built-ins in table order, then plugins, then registered ones (no imports)."""
        names = list(self.builtins)
        for name in [*self.plugins(), *self.registered]:
            if name not in names:
                names.append(name)
        return names

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.registered or name in self.builtins or name in self.plugins())

    def target(self, name: str) -> str | None:
        """Where ``name`` is loaded from (``"module:Attr"``), or None for registered/unknown names."""
        return self.builtins.get(name) or self.plugins().get(name)

    # -- loading -----------------------------------------------------------------------------------
    def get_class(self, name: str) -> type[T]:
        """The class registered as ``name`` (imports its module on first use)."""
        if name in self.registered:
            return self.registered[name]
        target = self.target(name)
        if target is None:
            raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(self.available()) or 'none'}")
        return self._load(target, name)

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> T:
        """``get_class(name)(*args, **kwargs)``."""
        return self.get_class(name)(*args, **kwargs)

    def _load(self, target: str, name: str) -> type[T]:
        module_name, colon, attr = target.partition(":")
        if not colon or not module_name or not attr:
            raise self.error(f"{self.kind} {name!r}: target {target!r} is not of the form 'module:Attr'")
        try:
            obj: Any = importlib.import_module(module_name.strip())
            for part in attr.split("[")[0].strip().split("."):  # an entry point may carry "[extras]"
                obj = getattr(obj, part)
        except Exception as exc:  # any failure to import names the entry, not only ImportError
            raise self.error(f"{self.kind} {name!r} could not be loaded from {target!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
        if not self._is_entry(obj):
            raise self.error(f"{self.kind} {name!r}: {target!r} is not a {self._what()}")
        return obj

    # -- registration ------------------------------------------------------------------------------
    def register(self, cls: type[T] | None = None, /, *, name: str | None = None) -> Any:
        """Register ``cls`` under ``name`` (default: its ``name_attr`` attribute) and return it.

        Usable as ``registry.register(cls)``, ``@registry.register`` or ``@registry.register(name="x")``.
        """
        if cls is None:
            return lambda c: self.register(c, name=name)
        key = name if name is not None else getattr(cls, self.name_attr, None)
        if not self._is_entry(cls) or not isinstance(key, str) or not key:
            raise self.error(f"{cls!r} is not a {self._what()} with a non-empty `{self.name_attr}` "
                             f"(or pass register(cls, name=...))")
        self.registered[key] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Forget a registered name (built-ins and plugins stay)."""
        self.registered.pop(name, None)

    def _is_entry(self, obj: Any) -> bool:
        return isinstance(obj, type) and (self.base is None or issubclass(obj, self.base))

    def _what(self) -> str:
        return f"{self.base_label} subclass" if self.base is not None else "class"
