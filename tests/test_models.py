"""The model registry on the real packaged SmolLM2: resolving, the fp32 cache, adapters, clear errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from appraiser import models
from appraiser.models import ModelNotFound, converted_dir, find_adapter, load_finetuned, load_model, resolve_packaged

NAME = "smollm2-135m"


@pytest.fixture(scope="session")
def smol():
    """SmolLM2 from the default cache (converted from its GGUF on the first run ever, ~30 s)."""
    return load_model(NAME)


def test_packaged_model_resolves_to_its_gguf_file():
    folder, gguf = resolve_packaged(NAME)
    assert (folder / gguf).is_file()
    assert gguf.endswith(".gguf")


def test_unknown_names_give_a_clear_error():
    with pytest.raises(ModelNotFound, match="smollm2-135m"):
        resolve_packaged("no-such-model")
    with pytest.raises(ModelNotFound, match="unknown model 'smollm3-1b'"):
        load_model("smollm3-1b")


def test_missing_folder_gives_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no model here"):
        load_model(str(tmp_path / "empty"))


def test_converted_folder_is_reused_on_the_next_load(smol, monkeypatch):
    model, tokenizer = smol
    folder = converted_dir(NAME)
    weights = folder / "model.safetensors"
    assert weights.is_file() and (folder / "config.json").is_file()
    before = weights.stat().st_mtime_ns
    gguf_reads = []  # a conversion starts by resolving the packaged GGUF: count those
    monkeypatch.setattr(models, "resolve_packaged", lambda name: gguf_reads.append(name) or resolve_packaged(name))
    again, _ = load_model(NAME)
    assert gguf_reads == []  # the GGUF was not read: the load came from the converted folder ...
    assert weights.stat().st_mtime_ns == before  # ... which was not written again
    ids = tokenizer("Price is $", return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(model(**ids).logits, again(**ids).logits)


def test_model_is_fp32_on_cpu_in_eval_mode_with_a_left_padding_tokenizer(smol):  # APPRAISER_DTYPE=fp32
    model, tokenizer = smol
    assert model.dtype == torch.float32
    assert not model.training
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "left"
    assert "quantization_config" not in json.loads((converted_dir(NAME) / "config.json").read_text())


def test_tokenizer_comes_from_the_converted_folder_and_splits_digits():
    tok = models.load_tokenizer(NAME)
    assert tok.convert_ids_to_tokens(tok.encode("123.00", add_special_tokens=False)) == ["1", "2", "3", ".", "0", "0"]


def test_4bit_without_bitsandbytes_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now fails as if not installed
    with pytest.raises(ModelNotFound, match=r"appraiser\[gpu\]"):
        load_model(NAME, load_in_4bit=True)


@pytest.mark.slow
def test_conversion_into_a_fresh_cache(tmp_path, monkeypatch):
    """The GGUF -> fp32 conversion itself, atomically into an empty cache (30-90 s)."""
    monkeypatch.setenv("APPRAISER_CACHE", str(tmp_path / "cache"))
    folder = models.ensure_converted(NAME)
    assert folder == tmp_path / "cache" / "models" / NAME
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [NAME]  # no temporary folder left behind


# ---------------------------------------------------------------------------------------- adapters


def _save_adapter(model, folder, prompt=None):
    """A real LoRA adapter with non-zero weights (so merging it changes the model), as the trainer saves it."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(str(folder))
    info = {"base_model": NAME, "prompt": prompt or {"max_text_tokens": 24}}
    (folder / models.FINETUNE_INFO).write_text(json.dumps(info))
    return peft_model


def test_finetuned_run_folder_loads_base_plus_merged_adapter(tmp_path):
    base, tokenizer = load_model(NAME)  # a private copy: get_peft_model changes it in place
    ids = tokenizer("What does this cost?\n\nA mug\n\nPrice is $", return_tensors="pt")
    with torch.inference_mode():
        plain = base(**ids).logits
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    peft_model = _save_adapter(base, run / "best")
    with torch.inference_mode():
        expected = peft_model(**ids).logits
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter does change the model

    assert find_adapter(run) == run / "best"
    merged, tok = load_model(str(run))  # a run folder: best/ adapter, base from appraiser.json
    assert not hasattr(merged, "peft_config")  # merged for speed
    with torch.inference_mode():
        got = merged(**ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert tok.padding_side == "left"


def test_find_adapter_prefers_best_then_final(tmp_path):
    run = tmp_path / "run"
    for sub in ("final", "best"):
        (run / sub).mkdir(parents=True)
        (run / sub / "adapter_config.json").write_text("{}")
    assert find_adapter(run) == run / "best"
    (run / "best" / "adapter_config.json").unlink()
    assert find_adapter(run) == run / "final"
    assert find_adapter(tmp_path / "nothing") is None
    with pytest.raises(ModelNotFound, match="no PEFT adapter"):
        load_finetuned(tmp_path)
