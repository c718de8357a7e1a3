"""`lookahead-rag bench-batch PROMPTS.jsonl`: the engine under load (docs/benchmarks.md).

For each batch size B, every prompt is decoded with B of them in flight (a newcomer is admitted
as soon as a row frees, as the service's model thread does) by
- `sequential`: one prompt after the other (`LookaheadGenerator.stream`, a batch of one);
- `plain`: the batched engine with no drafts (k = 0): plain batched decoding;
- `lookahead`: the batched engine as served, draft sizes chosen by goodput (per sequence in the
  ragged layout where the model allows it);
- `padded`: the same with the padded layout (one tree size for the whole pass).
With more prompts than B (`prompts_per_row` > 1) the figures are those of a busy service, rows
refilled as they free; with B prompts or fewer, of one wave, which ends with its slowest member.
Methods run one after another within each B, their order rotating from one B to the next.
Tokens/s is total tokens over the method's wall time, prefills included; `*_saturated_tok_s`
the same until the last prompt got its place (every row busy throughout: a loaded service, no
tail), `*_decode_tok_s` the decode passes alone (prefill costs both methods alike). Every output is
checked token for token against transformers' greedy `generate` (at a mismatch: the position
and the reference's top-2 logit gap there, as `bench` reports it). Time to first token counts
from a request's admission; inter-token latency is per request, after its first chunk. The
last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.generation_speed import (
    Prompt,
    Run,
    add_common_arguments,
    figure_table,
    find_mismatches,
    read_prompts,
)
from generation.batch import BatchDecoder, BatchStats
from generation.defaults import prefix_cache_bytes
from generation.engine import LookaheadConfig, LookaheadGenerator
from generation.models import load_model
from generation.prefix_cache import PrefixCache
from generation.step_cost import load_batch_costs

HELP = "the batched engine under load: B sequences at once"

METHODS = ("sequential", "plain", "lookahead", "padded")


@dataclass
class Timed(Run):
    """A request's tokens and when they came: admitted at `start`, chunks at `times`."""

    start: float = 0.0
    times: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # tokens per chunk

    @property
    def ttft(self) -> float:
        return self.times[0] - self.start

    @property
    def itl(self) -> float | None:
        """Seconds per token after the first chunk (None for a one-chunk answer)."""
        later = sum(self.sizes[1:])
        return (self.times[-1] - self.times[0]) / later if later else None


@dataclass
class MethodRun:
    runs: dict[str, Timed]
    seconds: float
    stats: BatchStats | None = None  # the batched methods'
    # (tokens, seconds) until the last prompt got its place: every row busy throughout, a
    # service under load; what follows is the tail, with rows emptying (batched methods, with
    # more prompts than rows).
    saturated: tuple[int, float] | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--batch-sizes", default="1,2,4,8,16", help="comma-separated B (default 1,2,4,8,16)"
    )
    parser.add_argument(
        "--methods", help=f"comma-separated subset of {','.join(METHODS)} (default all)"
    )
    parser.add_argument(
        "--prefill-chunk", type=int, default=256, help="prompt tokens a step while others decode"
    )
    parser.add_argument(
        "--per-prompt",
        type=Path,
        help="also write each prompt's figures per B and method here (JSONL): which prompts gain",
    )
    parser.add_argument(
        "--prefix-cache-mb",
        type=int,
        help="each batched run's prefix cache (default: as served on --device, 1024 on a CPU; "
        "0: none)",
    )


def run(args: argparse.Namespace) -> int:
    batch_sizes = _ints(args.batch_sizes, "--batch-sizes")
    methods = _methods(args.methods)
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be >= 1")
    if args.prefix_cache_mb is not None and args.prefix_cache_mb < 0:
        raise SystemExit("--prefix-cache-mb must be >= 0")
    cache_bytes = (
        prefix_cache_bytes("auto", args.device)
        if args.prefix_cache_mb is None
        else args.prefix_cache_mb << 20
    )
    if args.per_prompt is not None:  # before the run, not after it: nothing measured is lost
        try:
            args.per_prompt.write_text("")
        except OSError as exc:
            raise SystemExit(f"--per-prompt: cannot write {args.per_prompt}: {exc}") from exc
    torch.set_num_threads(args.threads)
    draft_size = args.draft_size if args.draft_size == "auto" else int(args.draft_size)
    config = LookaheadConfig(
        max_new_tokens=args.max_new_tokens,
        draft_size=draft_size,
        max_draft_size=args.max_draft_size,
    )
    engine = LookaheadGenerator(load_model(args.model, args.dtype, args.device), config)
    categories = set(args.categories.split(",")) if args.categories else None
    prompts = read_prompts(args.prompts, engine.encode, categories, args.limit)
    runners = _runners(engine, config, max(batch_sizes), args.prefill_chunk, cache_bytes)
    for method in methods:  # warm-up: first-call allocations, not timed
        runners[method](prompts[:2], 2, 4)
    reference = _greedy(engine, prompts, config.max_new_tokens)
    per_batch, mismatches, rows = {}, [], []
    bar = tqdm(total=len(batch_sizes) * len(methods), desc="bench-batch", file=sys.stderr)
    for i, b in enumerate(batch_sizes):
        results = {}
        for method in methods[i % len(methods) :] + methods[: i % len(methods)]:
            results[method] = runners[method](prompts, b, config.max_new_tokens)
            bar.update()
        per_batch[str(b)] = _figures(results, reference)
        per_batch[str(b)]["prompts_per_row"] = round(len(prompts) / b, 2)
        for method, result in results.items():
            found = find_mismatches(engine.lm.model, prompts, reference, result.runs, method)
            mismatches += [{"batch": b, "method": method, **m} for m in found]
            rows += _per_prompt(b, method, prompts, result.runs, reference)
    bar.close()
    report = {
        "per_batch": per_batch,
        "mismatches": mismatches,
        "greedy_tok_s": round(
            _tok_s(reference.values(), sum(r.seconds for r in reference.values())), 2
        ),
        "config": {
            "model": args.model,
            "dtype": engine.lm.dtype_name,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "max_new_tokens": config.max_new_tokens,
            "draft_size": config.draft_size,
            "prefill_chunk": args.prefill_chunk,
            "prefix_cache_mb": cache_bytes >> 20,
            "prompts": len(prompts),
            "categories": sorted({p.category for p in prompts}),
            "prompt_tokens_mean": round(float(np.mean([len(p.ids) for p in prompts])), 1),
            "layout": "ragged" if engine.ragged else "padded",
        },
    }
    if draft_size == "auto":
        report["cost_ms"] = {
            str(b): {str(q): round(t, 2) for q, t in curve.t_ms.items()}
            for b, curve in engine.costs(max(batch_sizes)).curves.items()
        }
    print(format_table(report))
    print(json.dumps(report))
    if args.per_prompt is not None:
        args.per_prompt.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return 0


def _per_prompt(
    batch: int,
    method: str,
    prompts: list[Prompt],
    runs: dict[str, Timed],
    reference: dict[str, Run],
) -> list[dict]:
    """One row per prompt: its answer's length, steps and first-token time in this run."""
    rows = []
    for prompt in prompts:
        run = runs[prompt.id]
        rows.append(
            {
                "batch": batch,
                "method": method,
                "id": prompt.id,
                "category": prompt.category,
                "prompt_tokens": len(prompt.ids),
                "tokens": len(run.tokens),
                "steps": run.steps,
                "tokens_per_step": round(len(run.tokens) / run.steps, 3) if run.steps else None,
                "ttft_s": round(run.ttft, 4),
                "identical": run.tokens == reference[prompt.id].tokens,
            }
        )
    return rows


def _runners(
    engine: LookaheadGenerator,
    config: LookaheadConfig,
    max_batch: int,
    prefill_chunk: int,
    prefix_cache_bytes: int,
) -> dict[str, Callable[[list[Prompt], int, int], MethodRun]]:
    auto = config.draft_size == "auto"
    costs = {
        ragged: load_batch_costs(engine.lm, max_batch, ragged) if auto else None
        for ragged in {engine.ragged, False}
    }

    def sequential(prompts: list[Prompt], batch: int, max_new: int) -> MethodRun:
        runs = {}
        t0 = time.perf_counter()
        for prompt in prompts:
            timed = Timed([], start=time.perf_counter())
            for chunk in engine.stream(
                prompt.ids, dataclasses.replace(config, max_new_tokens=max_new)
            ):
                _record(timed, chunk)
            runs[prompt.id] = timed
        return MethodRun(runs, time.perf_counter() - t0)

    def batched(
        draft_size: int | str, ragged: bool
    ) -> Callable[[list[Prompt], int, int], MethodRun]:
        def go(prompts: list[Prompt], batch: int, max_new: int) -> MethodRun:
            cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None  # per run
            decoder = BatchDecoder(engine.lm, batch, costs[ragged], prefill_chunk, ragged, cache)
            request = dataclasses.replace(config, max_new_tokens=max_new, draft_size=draft_size)
            return _drive(engine, decoder, prompts, request)

        return go

    return {
        "sequential": sequential,
        "plain": batched(0, engine.ragged),
        "lookahead": batched(config.draft_size, engine.ragged),
        "padded": batched(config.draft_size, False),
    }


def _drive(
    engine: LookaheadGenerator,
    decoder: BatchDecoder,
    prompts: list[Prompt],
    config: LookaheadConfig,
) -> MethodRun:
    """Every prompt through `decoder`, admitted as rows free up."""
    queue = list(reversed(prompts))
    runs, ids = {}, {}
    saturated, tokens = None, 0
    t0 = time.perf_counter()
    while queue or decoder.busy:
        while queue and decoder.free:
            prompt = queue.pop()
            ids[decoder.add(engine.request(prompt.ids, config))] = prompt.id
            runs[prompt.id] = Timed([], start=time.perf_counter())
            if not queue and tokens:
                saturated = (tokens, time.perf_counter() - t0)
        for handle, chunk in decoder.step():
            if chunk.finish_reason == "error":
                raise chunk.error
            _record(runs[ids[handle]], chunk)
            tokens += len(chunk.token_ids)
    return MethodRun(runs, time.perf_counter() - t0, decoder.stats, saturated)


def _record(timed: Timed, chunk) -> None:
    timed.times.append(time.perf_counter())
    timed.sizes.append(len(chunk.token_ids))
    timed.tokens.extend(chunk.token_ids)
    if chunk.stats is not None:
        timed.steps = chunk.stats.steps
        timed.draft_sizes = chunk.stats.draft_sizes
        timed.accepted = chunk.stats.accepted


@torch.inference_mode()
def _greedy(engine: LookaheadGenerator, prompts: list[Prompt], max_new: int) -> dict[str, Run]:
    """transformers' greedy `generate`: the reference every output must equal."""
    model, out = engine.lm.model, {}
    for prompt in tqdm(prompts, desc="greedy reference", file=sys.stderr):
        x = torch.from_numpy(prompt.ids).to(model.device).unsqueeze(0)
        t0 = time.perf_counter()
        tokens = model.generate(
            x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new
        )[0, len(prompt.ids) :].tolist()
        out[prompt.id] = Run(tokens, seconds=time.perf_counter() - t0)
    return out


def _figures(results: dict[str, MethodRun], reference: dict[str, Run]) -> dict:
    out: dict[str, float] = {}
    for method, result in results.items():
        runs = result.runs
        out[f"{method}_tok_s"] = round(_tok_s(runs.values(), result.seconds), 2)
        same = [runs[i].tokens == reference[i].tokens for i in runs]
        out[f"{method}_identity"] = round(sum(same) / len(same), 4)
        ttft = [r.ttft for r in runs.values()]
        itl = [r.itl for r in runs.values() if r.itl is not None]
        out[f"{method}_ttft_p50_s"] = round(float(np.percentile(ttft, 50)), 3)
        out[f"{method}_ttft_p95_s"] = round(float(np.percentile(ttft, 95)), 3)
        if itl:
            out[f"{method}_itl_p50_ms"] = round(1e3 * float(np.percentile(itl, 50)), 1)
            out[f"{method}_itl_p95_ms"] = round(1e3 * float(np.percentile(itl, 95)), 1)
        steps = [r.steps for r in runs.values() if r.steps]
        if steps:  # per sequence, not per step (a step's tokens follow its best sequence)
            out[f"{method}_seq_tokens_per_step"] = round(
                float(np.mean([len(r.tokens) / r.steps for r in runs.values() if r.steps])), 2
            )
        if result.saturated is not None:
            tokens, seconds = result.saturated
            out[f"{method}_saturated_tok_s"] = round(tokens / seconds, 2)
        if result.stats is not None:
            stats = result.stats
            out[f"{method}_mean_batch"] = round(stats.mean_batch, 2)
            out[f"{method}_tokens_per_step"] = round(stats.tokens_per_step, 2)
            out[f"{method}_draft_rows_per_step"] = round(stats.draft_rows_per_step, 2)
            out[f"{method}_rows_per_step"] = round(stats.rows / max(stats.steps, 1), 2)
            out[f"{method}_prefill_tokens"] = stats.prefill_tokens  # computed
            out[f"{method}_prefix_tokens"] = stats.prefix_tokens  # reused from the prefix cache
            parts = {
                "forward": stats.forward_s,
                "prefill": stats.prefill_s,
                "draft": stats.draft_s,
                "accept": stats.accept_s,
                "keep": stats.keep_s,
            }
            parts["other"] = result.seconds - sum(parts.values())
            out[f"{method}_time_share"] = {
                k: round(v / result.seconds, 3) for k, v in parts.items()
            }
            decode_s = result.seconds - stats.prefill_s
            out[f"{method}_step_ms"] = round(1e3 * decode_s / max(stats.steps, 1), 1)
            # The decode passes alone: what lookahead changes (prefill costs both methods alike).
            out[f"{method}_decode_tok_s"] = round(stats.tokens / decode_s, 2) if decode_s else 0.0
        else:
            steps = sum(r.steps for r in runs.values())
            out[f"{method}_tokens_per_step"] = round(
                sum(len(r.tokens) for r in runs.values()) / steps, 2
            )
    out["identity"] = min(v for k, v in out.items() if k.endswith("_identity"))
    if "plain_tok_s" in out and "lookahead_tok_s" in out:
        out["lookahead_vs_plain"] = round(out["lookahead_tok_s"] / out["plain_tok_s"], 3)
    for part in ("decode", "saturated"):
        if out.get(f"plain_{part}_tok_s") and f"lookahead_{part}_tok_s" in out:
            out[f"lookahead_{part}_vs_plain"] = round(
                out[f"lookahead_{part}_tok_s"] / out[f"plain_{part}_tok_s"], 3
            )
    if "padded_tok_s" in out and "lookahead_tok_s" in out:
        out["lookahead_vs_padded"] = round(out["lookahead_tok_s"] / out["padded_tok_s"], 3)
    if "sequential_tok_s" in out and "lookahead_tok_s" in out:
        out["lookahead_vs_sequential"] = round(out["lookahead_tok_s"] / out["sequential_tok_s"], 3)
    return out


def _tok_s(runs, seconds: float) -> float:
    return sum(len(r.tokens) for r in runs) / seconds


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise SystemExit(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise SystemExit(f"{flag} takes positive integers, got {text!r}")
    return values


def _methods(text: str | None) -> tuple[str, ...]:
    if text is None:
        return METHODS
    methods = {m.strip() for m in text.split(",") if m.strip()}
    if not methods or methods - set(METHODS):
        raise SystemExit(f"--methods takes a subset of {','.join(METHODS)}; got {text!r}")
    return tuple(m for m in METHODS if m in methods)


_COLUMNS = (
    ("sequential_tok_s", "seq t/s", "{:.1f}"),
    ("plain_tok_s", "plain t/s", "{:.1f}"),
    ("lookahead_tok_s", "la t/s", "{:.1f}"),
    ("lookahead_vs_plain", "la/plain", "{:.2f}x"),
    ("lookahead_saturated_vs_plain", "full rows la/plain", "{:.2f}x"),
    ("lookahead_decode_vs_plain", "decode la/plain", "{:.2f}x"),
    ("lookahead_vs_sequential", "la/seq", "{:.2f}x"),
    ("lookahead_vs_padded", "la/padded", "{:.2f}x"),
    ("plain_mean_batch", "plain B", "{:.1f}"),
    ("lookahead_mean_batch", "la B", "{:.1f}"),
    ("lookahead_tokens_per_step", "la tok/step", "{:.2f}"),
    ("lookahead_draft_rows_per_step", "la drafts/step", "{:.1f}"),
    ("lookahead_ttft_p95_s", "la ttft p95 s", "{:.2f}"),
    ("lookahead_itl_p95_ms", "la itl p95 ms", "{:.0f}"),
    ("identity", "identity", "{:.0%}"),
)


def format_table(report: dict) -> str:
    lines = figure_table("B", report["per_batch"], _COLUMNS)
    lines.append(f"greedy (transformers generate, one at a time): {report['greedy_tok_s']:.1f} t/s")
    for m in report["mismatches"]:
        lines.append(
            f"mismatch B={m['batch']} {m['method']} {m['id']} ({m['category']}): first at token "
            f"{m['position']}, top-2 logit gap {m['logit_gap']:.3g}"
        )
    return "\n".join(lines)
