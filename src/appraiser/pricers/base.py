"""What a pricer is: anything that maps items to prices.

A pricer may learn from a training split (`fit`), and prices a batch at a time (`predict`), so
local models can batch and API models can fan out. A failed guess is a `Prediction` with
`price=None` — never a silent 0 — so the evaluator counts and shows it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from appraiser.items import MAX_SANE_PRICE, Item


class Prediction(BaseModel):
    """One guess: the price (None when the pricer failed), an optional interval, the raw text."""

    price: float | None
    low: float | None = None
    high: float | None = None
    raw: str | None = None

    @property
    def failed(self) -> bool:
        return self.price is None


class Pricer(ABC):
    """Base class for all pricers. Subclasses set `name` and implement `predict`."""

    name: ClassVar[str] = "pricer"
    #: Many items per call is fine (batched local models); API pricers set this to 1 and let the
    #: evaluator's worker pool provide concurrency.
    batch_size: int = 256
    #: Threads the evaluator may use for this pricer (API pricers wait on the network).
    concurrency: int = 1

    def fit(self, train: Sequence[Item], validation: Sequence[Item] | None = None) -> Pricer:
        """Learn from training items. Pricers that need nothing keep this no-op."""
        return self

    @abstractmethod
    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        """One prediction per item, in order."""

    def config(self) -> dict[str, Any]:
        """Settings that identify this pricer's behaviour (stored with each evaluation)."""
        return {}

    @property
    def label(self) -> str:
        """The name shown on the leaderboard (name plus distinguishing settings, if any)."""
        return self.name

    def save(self, path: str | Path) -> Path:
        """Persist a fitted pricer (pickle by default; override for models with their own format).

        The file is two pickles: a header naming the appraiser version that wrote it, then the pricer. A pickle
        holds the classes' state, not their code, so a pricer saved by another version may load into classes
        that changed under it and fail later in odd ways: `load` refuses it up front instead. A pickle also runs
        code when loaded, so a saved pricer is only as safe as its source (see the README).

        Atomic: the pickle goes to a temporary file beside `path`, is flushed to disk, and then renamed
        over `path`, so a kill or a failure mid-way leaves the previous file (if any) as it was.
        """
        import pickle

        from appraiser import __version__
        from appraiser.atomic import replacing

        path = Path(path)
        with replacing(path) as tmp, open(tmp, "wb") as f:
            pickle.dump({SAVED_PRICER_HEADER: __version__}, f)
            pickle.dump(self, f)
        return path

    @staticmethod
    def load(path: str | Path) -> Pricer:
        """A pricer saved with `save`; a missing, damaged or foreign file is a DataError naming it, and so is one
        saved by another appraiser version. A file from before the version header (a bare pickled pricer)
        still loads.

        Unpickling runs whatever code the file names: load only files you made or trust.
        """
        import pickle

        from appraiser import __version__
        from appraiser.data.io import DataError

        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such saved pricer")
        if path.is_dir():
            raise DataError(f"{path}: is a folder, expected a saved pricer file")
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f)
                if isinstance(obj, dict) and SAVED_PRICER_HEADER in obj:
                    version = obj[SAVED_PRICER_HEADER]
                    if version != __version__:  # refused before the pricer itself is unpickled
                        raise DataError(
                            f"{path}: saved by appraiser {version}, this is {__version__}: refit and save again"
                        )
                    obj = pickle.load(f)
        except DataError:
            raise
        except Exception as e:  # a damaged pickle raises anything from EOFError to KeyError
            raise DataError(f"{path}: damaged or not a saved pricer ({type(e).__name__}: {e})") from None
        if not isinstance(obj, Pricer):
            raise DataError(f"{path}: not a saved pricer (holds a {type(obj).__name__})")
        return obj


#: The key of the header `Pricer.save` writes before the pricer: its value is the appraiser version.
SAVED_PRICER_HEADER = "appraiser_saved_pricer_version"


class FunctionPricer(Pricer):
    """Wrap a plain `item -> price` function (handy in notebooks and tests)."""

    def __init__(self, fn: Callable[[Item], float | None], name: str = "function"):
        self.fn = fn
        self._name = name

    @property
    def label(self) -> str:
        return self._name

    def predict(self, items: Sequence[Item]) -> list[Prediction]:
        out = []
        for it in items:
            p = self.fn(it)
            if isinstance(p, str):  # a model's answer handed back as it came ("$12.50"): read like one
                out.append(Prediction(price=parse_price_text(p), raw=p))
            elif p is None or (isinstance(p, int | float) and not isinstance(p, bool)):
                out.append(Prediction(price=None if p is None else float(p)))
            else:
                raise TypeError(
                    f"{self._name} returned {type(p).__name__} for item {it.id}: expected a price (a number), "
                    "None for no guess, or the model's text"
                )
        return out


# ---------------------------------------------------------------- price parsing from model text

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_RANGE = re.compile(rf"({_NUM})\s*(?:-|–|—|to)\s*\$?\s*({_NUM})")
_DOLLAR_RANGE = re.compile(rf"\$\s*({_NUM})\s*(?:-|–|—|to)\s*\$?\s*({_NUM})")
_ANY = re.compile(rf"(?<![\w.])({_NUM})")
_DOLLAR = re.compile(rf"\$\s*({_NUM})")
#: a minus sign right before the number (a "$" and spaces between allowed), not the dash of a range "45-50"
_MINUS = re.compile(r"(?:^|[^\w.,])[-−](?:\$\s*)?$")
_EXPONENT = re.compile(r"[eE][-+]?\d+")


#: A price answer is a few words; only its start is read. The patterns try every position, so a server that
#: ignores max_tokens and sends megabytes of digits would otherwise keep the parser busy for minutes.
PARSE_CHARS = 1000


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def parse_price_text(text: str | None) -> float | None:
    """Read a price out of model text: "$1,299.99", "Price is $45", "about 45 dollars", "45-50".

    A range gives its midpoint. "$" amounts win over other numbers ("Model 3-100 costs $45" is 45,
    not the range 3-100). Returns None when the text holds no number (a failure the evaluator counts).
    """
    if not text:
        return None
    s = text.strip()[:PARSE_CHARS]
    range_re, single_re = (_DOLLAR_RANGE, _DOLLAR) if "$" in s and _DOLLAR.search(s) else (_RANGE, _ANY)
    m = range_re.search(s)
    if m:
        lo, hi = _num(m.group(1)), _num(m.group(2))
        if hi >= lo:
            v = (lo + hi) / 2
            return v if v != float("inf") else None
    m = single_re.search(s)
    if not m:
        return None
    if _MINUS.search(s, 0, m.start(1)):  # "-5", "$-5", "-$5": a negative number is no price, not $5
        return None
    exponent = _EXPONENT.match(s, m.end(1))
    if exponent:  # "1e308" is not $1: the whole number, kept only if some product could cost it
        v = float(m.group(1).replace(",", "") + exponent.group(0))
        return v if 0 <= v <= MAX_SANE_PRICE else None
    v = _num(m.group(1))
    return v if v == v and v != float("inf") else None
