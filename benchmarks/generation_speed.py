"""`lookahead-rag bench PROMPTS.jsonl`: plain greedy vs transformers prompt lookup vs lookahead.

With `--temperature` above 0 every method samples instead (at the same settings), the reference
being transformers' plain sampling (`sample`); outputs are then random draws, so identity does
not apply and the figures are speed and acceptance.

Speed on shared machines is only comparable within one process and one run, so the methods
run interleaved prompt by prompt (their order rotating) on the same model, and every figure
that matters is a ratio; beside wall-clock ratios it gives CPU-time ratios (`*_cpu`), steadier
when other jobs share the cores. All methods run the same loaded model, kernels included, so
the ratios measure decoding, not kernels. Identity with greedy is checked token for token; at
a mismatch the top-2 logit gap of the reference model there says whether it is a float
near-tie. The last line printed is one JSON object (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from generation.defaults import DTYPE_SETTINGS
from generation.engine import LookaheadConfig, LookaheadGenerator
from generation.models import DEFAULT_MODEL, load_model
from generation.sampling import SamplingParams

HELP = "greedy vs prompt lookup vs lookahead speed"

METHODS = ("greedy", "pld", "lookahead")  # "sample" replaces "greedy" under sampling
PLD_TOKENS = 10  # what transformers' docs suggest (docs/benchmarks.md)


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    ids: np.ndarray


@dataclass
class Run:
    tokens: list[int]
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # this process's CPU time: steadier than wall on a busy machine
    steps: int = 0
    draft_sizes: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)  # accepted draft tokens per step


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The prompt file, its selection, the model and the lookahead options (shared with
    `bench-batch`)."""
    parser.add_argument(
        "prompts",
        type=Path,
        help="JSONL: {question_id, category, turns}, {id, prompt} or {id, ids}",
    )
    parser.add_argument(
        "--limit", type=int, help="at most N prompts, taken round-robin over categories"
    )
    parser.add_argument("--categories", help="comma-separated categories to keep")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPE_SETTINGS, help="auto: as the engine loads it"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: cores)",
    )
    parser.add_argument(
        "--draft-size",
        default="auto",
        help="lookahead draft size: 'auto' (cost-aware) or a fixed int",
    )
    parser.add_argument("--max-draft-size", type=int, default=LookaheadConfig.max_draft_size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--methods",
        help="comma-separated subset of greedy,pld,lookahead (sample for greedy when sampling)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="> 0: every method samples (0: greedy)"
    )
    parser.add_argument("--top-k", type=int, default=0, help="sampling: top-k (0: off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling: top-p (1: off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling: the random seed")


def run(args: argparse.Namespace) -> int:
    try:
        sampling = SamplingParams(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
        )
    except ValueError as exc:
        raise SystemExit(f"bad sampling option: {exc}") from exc
    reference = "greedy" if sampling.greedy else "sample"
    methods = _parse_methods(args.methods, reference)
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # transformers' sampling draws from the global generator
    draft_size = args.draft_size if args.draft_size == "auto" else int(args.draft_size)
    config = LookaheadConfig(
        max_new_tokens=args.max_new_tokens,
        draft_size=draft_size,
        max_draft_size=args.max_draft_size,
        sampling=sampling,
    )
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    engine = LookaheadGenerator(lm, config)
    categories = set(args.categories.split(",")) if args.categories else None
    prompts = read_prompts(args.prompts, engine.encode, categories, args.limit)
    runners = _runners(engine, config)
    for method in methods:  # warm-up: first-call allocations and lazy imports, not timed
        runners[method](prompts[0].ids[-32:], 4)
    runs: dict[str, dict[str, Run]] = {m: {} for m in methods}
    for i, prompt in enumerate(tqdm(prompts, desc="bench", unit="prompt", file=sys.stderr)):
        for method in methods[i % len(methods) :] + methods[: i % len(methods)]:
            runs[method][prompt.id] = _timed(runners[method], prompt.ids, config.max_new_tokens)
    mismatches = []
    if {"greedy", "lookahead"} <= set(runs):
        mismatches = find_mismatches(engine.lm.model, prompts, runs["greedy"], runs["lookahead"])
    report = summarise(prompts, runs, mismatches, reference)
    if reference == "sample":
        report["identity"] = "not applicable: sampled outputs are random draws"
    report["config"] = {
        "model": args.model,
        "dtype": lm.dtype_name,  # what ran ("auto" resolved); greedy ran at the same dtype
        "device": args.device,
        "threads": torch.get_num_threads(),
        "max_new_tokens": config.max_new_tokens,
        "draft_size": config.draft_size,
        "prompts": len(prompts),
        "sampling": dataclasses.asdict(sampling),
    }
    print(format_table(report))
    print(json.dumps(report))
    return 0


def read_prompts(
    path: Path,
    encode: Callable[[str | np.ndarray], np.ndarray],
    categories: set[str] | None = None,
    limit: int | None = None,
) -> list[Prompt]:
    """Chat-templated prompts, or token ids taken as they are (`{id, ids}`: a prompt already
    built, e.g. by `bench-quality --write-prompts`); `limit` takes them round-robin over
    categories, so even a short run covers every category."""
    by_category: dict[str, list[Prompt]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt_id = str(row.get("question_id", row.get("id", number)))
            category = str(row.get("category", "all"))
            if categories is not None and category not in categories:
                continue
            if "ids" in row:
                ids = encode(_token_ids(row["ids"]))
            else:
                ids = encode(row["turns"][0] if "turns" in row else row["prompt"])
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}:{number}: want {{question_id, category, turns: [text]}}, "
                f"{{id, prompt}} or {{id, ids: [token ids]}} ({type(exc).__name__}: {exc})"
            ) from exc
        by_category.setdefault(category, []).append(Prompt(prompt_id, category, ids))
    queues = list(by_category.values())
    ordered = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    if not ordered:
        raise ValueError(f"no prompts in {path} (categories: {categories or 'all'})")
    return ordered[:limit]


def _token_ids(value: object) -> np.ndarray:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(i, int) and i >= 0 for i in value)
    ):
        raise ValueError("ids must be a non-empty list of token ids (ints >= 0)")
    return np.asarray(value, dtype=np.int64)


def _runners(engine: LookaheadGenerator, config: LookaheadConfig) -> dict[str, Callable]:
    model = engine.lm.model
    sampling = config.sampling
    decoding = {"do_sample": False}
    if not sampling.greedy:
        decoding = {
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
        }

    def transformers_generate(ids: np.ndarray, max_new: int, **kw) -> Run:
        x = torch.from_numpy(ids).to(model.device).unsqueeze(0)
        out = model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, **decoding, **kw
        )
        return Run(out[0, len(ids) :].tolist())

    def lookahead(ids: np.ndarray, max_new: int) -> Run:
        result = engine.generate(ids, dataclasses.replace(config, max_new_tokens=max_new))
        stats = result.stats
        return Run(
            result.token_ids,
            steps=stats.steps,
            draft_sizes=stats.draft_sizes,
            accepted=stats.accepted,
        )

    return {
        "greedy" if sampling.greedy else "sample": transformers_generate,
        "pld": lambda ids, max_new: transformers_generate(
            ids, max_new, prompt_lookup_num_tokens=PLD_TOKENS
        ),
        "lookahead": lookahead,
    }


def _timed(runner: Callable[[np.ndarray, int], Run], ids: np.ndarray, max_new: int) -> Run:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    run = runner(ids, max_new)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    run.seconds, run.cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return run


def _parse_methods(text: str | None, reference: str) -> tuple[str, ...]:
    """The methods asked for (all by default); `reference` is "greedy" or "sample"."""
    known = (reference, *METHODS[1:])
    if text is None:
        return known
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = set(methods) - set(known)
    if unknown or not methods:
        raise SystemExit(f"--methods takes a subset of {','.join(known)}; got {text!r}")
    return tuple(m for m in known if m in methods)


@torch.inference_mode()
def top2_gap(model: torch.nn.Module, ids: np.ndarray) -> float:
    """Logit gap between the model's two best next tokens after `ids` (small = a near-tie)."""
    x = torch.from_numpy(ids).to(model.device).unsqueeze(0)
    top = model(input_ids=x, logits_to_keep=1).logits[0, -1].float().topk(2).values
    return float(top[0] - top[1])


def find_mismatches(
    model: torch.nn.Module,
    prompts: list[Prompt],
    reference: dict[str, Run],
    candidate: dict[str, Run],
    name: str = "lookahead",
) -> list[dict]:
    """Prompts whose `candidate` tokens differ from the `reference` (greedy) ones: the first
    differing position and the reference model's top-2 logit gap there."""
    found = []
    for prompt in prompts:
        want, got = reference[prompt.id].tokens, candidate[prompt.id].tokens
        if want == got:
            continue
        at = next(
            (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
            min(len(want), len(got)),
        )
        context = np.concatenate([prompt.ids, np.asarray(want[:at], dtype=np.int64)])
        found.append(
            {
                "id": prompt.id,
                "category": prompt.category,
                "position": at,
                "greedy_token": want[at] if at < len(want) else None,
                f"{name}_token": got[at] if at < len(got) else None,
                "logit_gap": round(top2_gap(model, context), 6),
            }
        )
    return found


def summarise(
    prompts: list[Prompt],
    runs: dict[str, dict[str, Run]],
    mismatches: list[dict],
    reference: str = "greedy",
) -> dict:
    """Figures per category and overall; tokens/s are total tokens over total seconds."""
    groups = {"overall": [p.id for p in prompts]}
    for prompt in prompts:
        groups.setdefault(prompt.category, []).append(prompt.id)
    figures = {name: _figures(ids, runs, reference) for name, ids in groups.items()}
    overall = figures.pop("overall")
    return {"overall": overall, "per_category": figures, "mismatches": mismatches}


def _figures(ids: list[str], runs: dict[str, dict[str, Run]], reference: str) -> dict:
    out: dict[str, float] = {"prompts": len(ids)}
    rate, cpu_rate = {}, {}
    for method, by_id in runs.items():
        chosen = [by_id[i] for i in ids]
        tokens = sum(len(r.tokens) for r in chosen)
        rate[method] = tokens / sum(r.seconds for r in chosen)
        cpu_rate[method] = tokens / sum(r.cpu_seconds for r in chosen)
        out[f"{method}_tok_s"] = round(rate[method], 2)
    for name, num, den in (
        (f"speedup_vs_{reference}", "lookahead", reference),
        ("speedup_vs_pld", "lookahead", "pld"),
        (f"pld_vs_{reference}", "pld", reference),
    ):
        if num in rate and den in rate:
            out[name] = round(rate[num] / rate[den], 3)
            out[f"{name}_cpu"] = round(cpu_rate[num] / cpu_rate[den], 3)
    if "lookahead" in runs:
        chosen = [runs["lookahead"][i] for i in ids]
        out["tokens_per_step"] = round(
            sum(len(r.tokens) for r in chosen) / sum(r.steps for r in chosen), 3
        )
        out["mean_draft_size"] = round(
            float(np.mean([d for r in chosen for d in r.draft_sizes])), 2
        )
        accepted = sum(sum(r.accepted) for r in chosen)
        drafted = sum(sum(r.draft_sizes) for r in chosen)
        out["accepted_per_step"] = round(accepted / sum(r.steps for r in chosen), 3)
        out["acceptance_rate"] = round(accepted / drafted, 4) if drafted else 0.0
    if "lookahead" in runs and "greedy" in runs:
        same = [runs["lookahead"][i].tokens == runs["greedy"][i].tokens for i in ids]
        out["identity"] = round(sum(same) / len(same), 4)
    return out


_COLUMNS = (
    ("prompts", "prompts", "{:.0f}"),
    ("greedy_tok_s", "greedy t/s", "{:.1f}"),
    ("sample_tok_s", "sample t/s", "{:.1f}"),
    ("pld_tok_s", "pld t/s", "{:.1f}"),
    ("lookahead_tok_s", "lookahead t/s", "{:.1f}"),
    ("speedup_vs_greedy", "la/greedy", "{:.2f}x"),
    ("speedup_vs_sample", "la/sample", "{:.2f}x"),
    ("speedup_vs_pld", "la/pld", "{:.2f}x"),
    ("pld_vs_greedy", "pld/greedy", "{:.2f}x"),
    ("pld_vs_sample", "pld/sample", "{:.2f}x"),
    ("speedup_vs_greedy_cpu", "la/greedy cpu", "{:.2f}x"),
    ("speedup_vs_sample_cpu", "la/sample cpu", "{:.2f}x"),
    ("tokens_per_step", "tok/step", "{:.2f}"),
    ("accepted_per_step", "acc/step", "{:.2f}"),
    ("acceptance_rate", "acc rate", "{:.0%}"),
    ("mean_draft_size", "mean D", "{:.1f}"),
    ("identity", "identity", "{:.0%}"),
)


def format_table(report: dict) -> str:
    rows = {**report["per_category"], "overall": report["overall"]}
    lines = figure_table("category", rows, _COLUMNS)
    if "identity" in report:
        lines.append(f"identity: {report['identity']}")
    for m in report["mismatches"]:
        lines.append(
            f"mismatch {m['id']} ({m['category']}): first at token {m['position']}, "
            f"greedy {m['greedy_token']} vs lookahead {m['lookahead_token']}, "
            f"top-2 logit gap {m['logit_gap']:.3g}"
        )
    return "\n".join(lines)


def figure_table(label: str, rows: dict[str, dict], columns: tuple) -> list[str]:
    """Right-aligned text table: one line per row of figures, one column per `(key, title,
    format)` that some row has ("-" where a row lacks it)."""
    columns = [c for c in columns if any(c[0] in figures for figures in rows.values())]
    header = [label, *(title for _, title, _ in columns)]
    body = [
        [name, *(fmt.format(f[key]) if key in f else "-" for key, _, fmt in columns)]
        for name, f in rows.items()
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return [
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *body]
    ]
