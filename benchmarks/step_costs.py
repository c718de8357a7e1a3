"""`lookahead-rag bench-steps`: the step-cost curve t(q) of a model on its device, at a batch of
`--batch` sequences (docs/benchmarks.md): the engine's own verify passes, as it measures them
for its cost surface t(b, q).

Prints a table (median, quartiles, t(q)/t(1), and how many draft tokens a q-token pass must
accept on average to beat plain decoding) and, last, one JSON line. `--compare` also runs
transformers' stock model in the same process, interleaved, to show what the speed-ups buy;
`--vs-dtype` the same model in another dtype, interleaved, to show what the dtype buys.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from generation.defaults import DTYPE_SETTINGS
from generation.models import DEFAULT_MODEL, DTYPES, LoadedModel, load_model
from generation.step_cost import CONTEXT_LEN, QS, curve_from_samples, sample_step_costs

HELP = "step-cost curve t(q) of verify passes, at a batch size"


def _parse_qs(text: str) -> list[int]:
    try:
        qs = sorted({int(q) for q in text.split(",") if q.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers wanted, got {text!r}") from None
    if not qs or qs[0] < 1:
        raise argparse.ArgumentTypeError(f"positive integers wanted, got {text!r}")
    return qs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local path or the default")
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_SETTINGS, help="auto: as the engine loads it"
    )
    parser.add_argument(
        "--vs-dtype",
        choices=list(DTYPES),
        help="also this dtype, interleaved; the JSON adds its figures and t(q) ratios",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--context-len", type=int, default=CONTEXT_LEN)
    parser.add_argument("--repeats", type=int, default=15, help="timed passes per q (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--qs",
        type=_parse_qs,
        default=list(QS),
        help="comma-separated q, e.g. 1,2,4,8,16,32,64,128",
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="sequences per pass, each with its own cache"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, = cores)")
    parser.add_argument(
        "--stock", action="store_true", help="transformers' stock model only (no speed-ups)"
    )
    parser.add_argument(
        "--compare", action="store_true", help="also the stock model, interleaved, for reference"
    )


def _table(label: str, lm: LoadedModel, samples: dict[int, list[float]]) -> str:
    t1 = float(np.median(samples[min(samples)]))
    lines = [
        f"{label}: {lm.name} {lm.dtype} on {lm.device}, {torch.get_num_threads()} threads, "
        f"speed-ups: {', '.join(lm.speedups) or 'none'}",
        f"{'q':>5} {'t(q) ms':>9} {'p25':>8} {'p75':>8} {'t(q)/t(1)':>10} {'break-even':>11}",
    ]
    for q, times in samples.items():
        p25, med, p75 = np.percentile(times, [25, 50, 75])
        lines.append(
            f"{q:>5} {med:>9.1f} {p25:>8.1f} {p75:>8.1f} {med / t1:>10.2f} {med / t1 - 1:>11.2f}"
        )
    return "\n".join(lines)


def _summary(
    lm: LoadedModel, samples: dict[int, list[float]], context_len: int, batch: int
) -> dict:
    curve = curve_from_samples(lm, samples, context_len, batch)
    t = curve.t_ms
    return {
        "device": curve.device,
        "batch": batch,
        "model": curve.model,
        "dtype": curve.dtype,
        "threads": curve.threads,
        "context_len": context_len,
        "speedups": list(lm.speedups),
        # 4 significant digits: a fixed number of decimals would blur a fast model's 0.1 ms
        "t_ms": {str(q): float(f"{v:.4g}") for q, v in t.items()},
        "ratio_16_1": round(t[16] / t[1], 3) if 1 in t and 16 in t else None,
    }


def run(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise SystemExit("--batch must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    setups = {"stock" if args.stock else "fast": (args.dtype, not args.stock)}
    if args.compare and not args.stock:
        setups["stock"] = (args.dtype, False)
    if args.vs_dtype:
        setups["vs_dtype"] = (args.vs_dtype, not args.stock)
    lms = {
        label: load_model(args.model, dtype, args.device, fast_kernels=fast)
        for label, (dtype, fast) in setups.items()
    }
    all_samples = sample_step_costs(
        list(lms.values()), args.qs, args.context_len, args.repeats, args.warmup, batch=args.batch
    )
    summaries = {}
    for (label, lm), samples in zip(lms.items(), all_samples, strict=True):
        print(_table(label, lm, samples), end="\n\n")
        summaries[label] = _summary(lm, samples, args.context_len, args.batch)
    result = summaries.pop(next(iter(lms)))
    result.update(summaries)
    if "vs_dtype" in summaries:
        other = summaries["vs_dtype"]["t_ms"]
        result["ratio_vs_dtype"] = {q: round(t / other[q], 3) for q, t in result["t_ms"].items()}
    print(json.dumps(result))
    return 0
