"""Pricers by name, so the CLI can say `appraiser eval NAME` for any of them.

Baselines register here now; LLM pricers (local, API, RAG, ensemble) register the same way.
A factory takes keyword options and returns an unfitted pricer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    import appraiser.pricers.baselines  # noqa: F401
    import appraiser.pricers.llm  # noqa: F401


def names(kind: str | None = None) -> list[str]:
    _load_builtin()
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def get(name: str) -> Entry:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown pricer {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create(name: str, **options) -> Pricer:
    return get(name).factory(**options)
