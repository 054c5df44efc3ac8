"""Pricers by name, so the CLI can say `appraiser eval NAME` for any of them.

Baselines register here now; LLM pricers (local, API, RAG, ensemble) register the same way.
A factory takes keyword options and returns an unfitted pricer.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appraiser.data.io import DataError
from appraiser.pricers.base import Pricer


@dataclass
class Entry:
    name: str
    factory: Callable[..., Pricer]
    description: str
    kind: str = "baseline"  # baseline | llm | api | other
    needs_fit: bool = True


_REGISTRY: dict[str, Entry] = {}


def register(name: str, description: str, kind: str = "baseline", needs_fit: bool = True):
    """Decorator: register a pricer class or factory under `name`."""

    def deco(factory):
        _REGISTRY[name] = Entry(name, factory, description, kind, needs_fit)
        return factory

    return deco


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    import appraiser.pricers.api  # noqa: F401
    import appraiser.pricers.baselines  # noqa: F401
    import appraiser.pricers.ensemble  # noqa: F401
    import appraiser.pricers.knn  # noqa: F401
    import appraiser.pricers.llm  # noqa: F401
    import appraiser.pricers.readout  # noqa: F401


def names(kind: str | None = None) -> list[str]:
    _load_builtin()
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


class UnknownPricer(DataError, KeyError):
    """A pricer name nobody registered (a DataError for the CLI; a KeyError for `registry.get` callers)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get(name: str) -> Entry:
    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownPricer(f"unknown pricer {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def options(name: str) -> dict[str, Any]:
    """The options a pricer's factory takes, with their defaults (`inspect.Parameter.empty` when required).

    A baseline's own hyper-parameters (`default_params`, taken through `**params`) count as options.
    """
    factory = get(name).factory
    out: dict[str, Any] = {}
    for target in _init_chain(factory):
        try:
            params = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):  # a builtin or C factory: nothing to list
            params = []
        for p in params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                out.setdefault(p.name, p.default)
    out.update(getattr(factory, "default_params", None) or {})
    return out


def _init_chain(factory: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The callables whose named parameters are the factory's options: a function itself; for a class, its
    `__init__` and, while each passes `**kwargs` on, its bases' (so a baseline subclass that adds its own
    options and hands the rest to `Baseline.__init__` need not spell out the shared ones)."""
    if not inspect.isclass(factory):
        return [factory]
    chain = []
    for klass in factory.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        chain.append(init)
        try:
            passes_on = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            break
        if not passes_on:
            break
    return chain


def _takes_any_keyword(factory: Callable[..., Any]) -> bool:
    """Whether the factory takes **kwargs that it does not itself check (a baseline checks them)."""
    if getattr(factory, "default_params", None) is not None:
        return False
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD for p in params)


def _checked(name: str, factory: Callable[..., Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` with each value validated against the factory's annotation (lax: "3" is not an int, 3 is;
    3 is a float); an unknown option or a wrongly-typed value is a DataError naming the valid options."""
    from pydantic import TypeAdapter, ValidationError

    known = options(name)
    listing = ", ".join(sorted(known)) or "none"
    unknown = sorted(set(given) - set(known))
    if unknown and not _takes_any_keyword(factory):
        raise DataError(f"{name}: unknown option(s) {', '.join(unknown)}; its options: {listing}")
    hints: dict[str, Any] = {}
    for target in reversed(_init_chain(factory)):  # the subclass's own annotation wins
        try:
            hints.update(typing.get_type_hints(target))
        except Exception:  # an annotation that cannot be resolved: leave the values as given
            continue
    defaults = getattr(factory, "default_params", None) or {}
    out = dict(given)
    for key, value in given.items():
        hint = hints.get(key)
        if hint is None and isinstance(defaults.get(key), bool):  # a baseline's switch: "False" must be False
            hint = bool
        if hint is None or hint is Any:
            continue
        kinds = (hint, *typing.get_args(hint))
        if isinstance(value, bool) and int in kinds and bool not in kinds:  # pydantic reads true as 1 (rag=true)
            raise DataError(f"{name}: option {key}={value!r}: a whole number, not true or false")
        try:
            out[key] = TypeAdapter(hint).validate_python(value)
        except ValidationError as e:
            from appraiser.errors import validation_message

            raise DataError(f"{name}: option {key}={value!r}: " + validation_message(e, "").lstrip(": ")) from None
        except Exception:  # a type pydantic cannot check (an arbitrary class): the factory checks it
            continue
    return out


def create(name: str, **options_: Any) -> Pricer:
    """A new, unfitted pricer `name` with `options_`.

    Bad options are the user's to fix, so they are DataErrors with the valid options listed: an
    unknown option, a value of the wrong type, or one the factory rejects (its TypeError / ValueError).
    """
    entry = get(name)
    checked = _checked(name, entry.factory, options_)
    try:
        return entry.factory(**checked)
    except (TypeError, ValueError) as e:
        listing = ", ".join(sorted(options(name))) or "none"
        message = str(e) if str(e).startswith(f"{name}:") else f"{name}: {e}"
        raise DataError(f"{message} (its options: {listing})") from None
