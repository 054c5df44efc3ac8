"""Training speed: Appraiser's trainer against plain TRL `SFTTrainer`, same model, LoRA, batch and data.

Both fine-tune the same LoRA (r=16 on q,k,v,o) in fp32 on the same prompt-completion examples (the
first `--n` training items, text cut to `--max-text-tokens`), batch 8, for `--steps` timed optimizer
steps after `--warmup` untimed ones. TRL gets the standard prompt-completion dataset format with
`completion_only_loss=True` and its defaults otherwise (which include gradient checkpointing: less
memory, more time, and full-vocabulary logits plus entropy/accuracy metrics). Appraiser's trainer runs
as `appraiser train` would (run store writes included; probes and checkpoints off, as TRL has none).

Each measurement is a fresh child process, so its peak memory (ru_maxrss) is its own. Steps are timed
one by one and examples/s comes from the median step, which a busy shared machine disturbs least.

    python benchmarks/train_speed.py                                  # both embedded models, 2 threads
    python benchmarks/train_speed.py --models smollm2-135m --threads 1 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("APPRAISER_DATA", REPO.parent / "shared" / "data"))


def _step_timer() -> tuple[object, list[float]]:
    from transformers import TrainerCallback

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            times.append(time.perf_counter())

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            times.append(time.perf_counter())

    return Timer(), times


def _rate(times: list[float], warmup: int, batch: int) -> dict[str, float]:
    """Examples/s from the median step time after the warm-up steps, and the fastest step.

    The median (not the mean) because on a shared machine a few steps stall for reasons of its own.
    """
    durations = [b - a for a, b in zip(times[warmup:], times[warmup + 1 :], strict=False)]
    median = statistics.median(durations)
    return {
        "examples_per_s": batch / median,
        "s_per_step": median,
        "best_s_per_step": min(durations),
        "steps": len(durations),
    }


def run_appraiser(opts: argparse.Namespace) -> dict:
    import transformers

    from appraiser.training import TrainConfig, trainer

    timer, times = _step_timer()
    original = trainer.PriceTrainer.__init__

    def with_timer(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), timer]
        original(self, *args, **kwargs)

    trainer.PriceTrainer.__init__ = with_timer
    transformers.logging.set_verbosity_error()
    cfg = TrainConfig(
        model=opts.model,
        train=DATA / "train.jsonl",
        validation=DATA / "validation.jsonl",
        n_train=opts.n,
        weighting="none",
        max_text_tokens=opts.max_text_tokens,
        batch_size=opts.batch,
        max_steps=opts.warmup + opts.steps,
        probe_every=0,
        save_every=10_000,
        threads=opts.threads,
        lora_r=16,
        lora_alpha=32,
    )
    with tempfile.TemporaryDirectory() as home:
        os.environ["APPRAISER_HOME"] = home
        trainer.start(cfg)
    return _rate(times, opts.warmup, opts.batch)


def run_trl(opts: argparse.Namespace) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from appraiser.data.io import read_items
    from appraiser.data.prompts import PromptConfig, make_completion, make_prompt
    from appraiser.models import load_model

    torch.set_num_threads(opts.threads)
    transformers.logging.set_verbosity_error()
    model, tok = load_model(opts.model, dtype=torch.float32, device="cpu")
    tok.padding_side = "right"
    prompt_cfg = PromptConfig(max_text_tokens=opts.max_text_tokens)
    items = read_items(DATA / "train.jsonl", limit=opts.n)
    rows = [
        {"prompt": make_prompt(it, tok, prompt_cfg), "completion": make_completion(it.price, prompt_cfg)}
        for it in items
    ]
    timer, times = _step_timer()
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=opts.batch,
            max_steps=opts.warmup + opts.steps,
            learning_rate=2e-4,
            lr_scheduler_type="cosine",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            completion_only_loss=True,
            disable_tqdm=True,
            seed=42,
        )
        lora = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        )
        sft = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
            callbacks=[timer],
        )
        sft.train()
    return _rate(times, opts.warmup, opts.batch)


def child(opts: argparse.Namespace) -> None:
    result = run_appraiser(opts) if opts.only == "appraiser" else run_trl(opts)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def measure(which: str, model: str, opts: argparse.Namespace, dtype: str = "fp32") -> dict:
    """One child process's figures; `dtype` is Appraiser's (fp32 here: the ratio is about the trainer)."""
    cmd = [sys.executable, __file__, "--only", which, "--model", model]
    for k in ("n", "batch", "steps", "warmup", "threads", "max_text_tokens"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(opts, k))]
    # fp32 for both by default, whatever this CPU would pick (benchmarks/dtype_speed.py measures bf16)
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "APPRAISER_DTYPE": dtype}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{which} on {model} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--model", default="smollm2-135m", help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=("appraiser", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=200, help="training items")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-text-tokens", type=int, default=100, help="description budget (prompts ~120 tokens)")
    opts = ap.parse_args()
    if opts.only:
        child(opts)
        return
    print(
        f"LoRA r=16 on q,k,v,o; fp32; batch {opts.batch}; text <= {opts.max_text_tokens} tokens; "
        f"{opts.threads} threads; {opts.steps} timed steps after {opts.warmup} warm-up"
    )
    print(f"{'model':<14} {'trainer':<10} {'examples/s':>10} {'s/step':>8} {'fastest':>8} {'peak RSS':>10}")
    for model in [m.strip() for m in opts.models.split(",") if m.strip()]:
        res = {}
        for which in ("appraiser", "trl"):
            r = measure(which, model, opts)
            res[which] = r
            print(
                f"{model:<14} {which:<10} {r['examples_per_s']:>10.2f} {r['s_per_step']:>8.2f} "
                f"{r['best_s_per_step']:>8.2f} {r['peak_rss_mb']:>8.0f} MB",
                flush=True,
            )
        ratio = res["appraiser"]["examples_per_s"] / res["trl"]["examples_per_s"]
        best = res["trl"]["best_s_per_step"] / res["appraiser"]["best_s_per_step"]
        print(
            f"{model:<14} speed-up of Appraiser over TRL: {ratio:.2f}x on median steps, {best:.2f}x on the "
            "fastest (target >= 2x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
