"""The peer side of `benchmarks.gpu_versus`: transformers' model built from the same config
dict (random weights, SDPA attention) with PEFT's LoRA, trained as PEFT users run it: bf16 base
weights, float32 adapters (PEFT's `autocast_adapter_dtype`) and head (`modules_to_save`, cast
to float32 as the trainable parameters of a mixed-precision run are), `torch.autocast(bfloat16)`,
AdamW (`fused=True` on CUDA, transformers' default optimizer there). Full fine-tuning: the
float32 model under autocast (AMP). `peft_compile`: the same under `torch.compile`.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time

from benchmarks.gpu_versus_shapes import LORA_ALPHA, MODES, NUM_LABELS, Shape, make_batch
from benchmarks.timing import step_summary, timed

# PEFT's names of the q and v projections; GPT-2 fuses q, k, v into `c_attn` (PEFT's default).
LORA_TARGETS = {"roberta": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


def build_model(shape: Shape, mode: str, device: str):
    """(model, its trainable parameters) for `mode`."""
    import torch
    import transformers

    hf = {k: v for k, v in shape.hf.items() if k != "model_type"}
    if shape.family == "roberta":
        hf |= {"num_labels": NUM_LABELS, "classifier_dropout": 0.0}
    config = transformers.AutoConfig.for_model(shape.family, attn_implementation="sdpa", **hf)
    cls = {
        "roberta": transformers.RobertaForSequenceClassification,
        "gpt2": transformers.GPT2LMHeadModel,
        "llama": transformers.LlamaForCausalLM,
    }[shape.family]
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(config)
    spec = MODES[mode]
    if not spec["full_finetune"]:
        from peft import LoraConfig, get_peft_model

        model = model.to(torch.bfloat16)
        lora = LoraConfig(
            r=spec["rank"],
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS[shape.family],
            fan_in_fan_out=shape.family == "gpt2",  # GPT-2's Conv1D stores (in, out)
            task_type="SEQ_CLS" if shape.family == "roberta" else "CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad]


def torch_batch(shape: Shape, batch: int, device: str) -> dict:
    """`gpu_versus_shapes.make_batch`'s arrays as torch tensors (LM: labels = the ids, shifted
    by transformers as our loss shifts them)."""
    import torch

    b = make_batch(shape, batch)
    out = {
        "input_ids": torch.from_numpy(b["input_ids"]).long().to(device),
        "attention_mask": torch.from_numpy(b["attention_mask"]).long().to(device),
    }
    if shape.family == "roberta":
        out["labels"] = torch.from_numpy(b["labels"]).long().to(device)
    else:
        out["labels"] = out["input_ids"]
    return out


def matmul_peak(device: str, tiny: bool) -> float:
    """bf16 FLOP/s of n x n products (8192 on a GPU), four per timed call: the median."""
    import torch

    n, reps = (256, 3) if tiny else (8192, 10)
    gen = torch.Generator(device=device).manual_seed(1)
    a, *bs = [
        torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen) for _ in "abcde"
    ]

    def four():
        for b in bs:
            torch.mm(a, b)
        _sync(device)

    return 4 * 2 * n**3 / statistics.median(timed(four, reps, warmup=2))


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_case(
    shape: Shape, mode: str, side: str, batch_size: int, steps: int, warmup: int, tiny: bool
) -> dict:
    import peft
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not tiny and device == "cpu":
        raise SystemExit("torch sees no GPU (torch.cuda.is_available() is False).")
    model, params = build_model(shape, mode, device)
    run = torch.compile(model) if side == "peft_compile" else model
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda")
    batch = torch_batch(shape, batch_size, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses = []

    def one():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = run(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        _sync(device)

    start = time.perf_counter()
    one()  # torch.compile compiles here (forward and backward)
    first_step_s = time.perf_counter() - start
    cpu: list[float] = []
    times = timed(one, steps, warmup=max(warmup - 1, 0), cpu=cpu)
    if device == "cuda":
        peak = {"peak_memory_bytes": torch.cuda.max_memory_allocated(), "memory_source": "torch"}
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = {"peak_memory_bytes": rss, "memory_source": "ru_maxrss (CPU: the whole process)"}
    attn = None
    with contextlib.suppress(AttributeError):
        attn = model.config._attn_implementation
    return {
        "device_kind": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "platform": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "attn_implementation": attn,
        "batch": batch_size,
        "trainable_params": sum(p.numel() for p in params),
        "frozen_params": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        **step_summary(times, cpu, steps, batch_size * shape.length),
        "first_step_s": first_step_s,
        **peak,
        "loss_first_last": [float(losses[0]), float(losses[-1])],
        "matmul_peak_flops": matmul_peak(device, tiny),
        "torch_threads": torch.get_num_threads(),
    }
