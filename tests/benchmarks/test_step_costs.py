"""`lookahead-rag bench-steps` end to end on a tiny saved model: a table per model set-up and
the JSON last line it promises (docs/benchmarks.md), figures checked against each other."""

import json
import math

import pytest
from benchhelpers import is_rounded_ratio

from generation.models import auto_dtype
from pipeline.commands.cli import main

KEYS = {"device", "batch", "model", "dtype", "threads", "context_len", "speedups", "t_ms"}
KEYS |= {"ratio_16_1"}
T_DIGITS = 4  # significant digits of the JSON's t_ms
RATIO_ERR = 0.0005  # ratio_16_1 has 3 decimals
TABLE_ERR = 0.005  # t(q)/t(1) and the break-even have 2 decimals in the table


def half_unit(t: float) -> float:
    """How far a t_ms value printed as `t` can be from the measured one."""
    return 0.5 * 10 ** (math.floor(math.log10(t)) - T_DIGITS + 1)


def bench_steps(capsys, model, *options) -> tuple[dict, dict[str, list[str]]]:
    """The JSON last line, and each table (label line first) by its set-up's label."""
    argv = ["bench-steps", "--model", str(model), "--qs", "16,1", "--repeats", "2", "--warmup", "0"]
    options = ("--dtype", "float32", *options)  # a later --dtype wins
    assert main([*argv, "--context-len", "24", "--threads", "1", *options]) == 0
    *tables, last = capsys.readouterr().out.strip().split("\n\n")
    return json.loads(last), {t.split(":", 1)[0]: t.splitlines() for t in tables}


def check_setup(summary: dict, lines: list[str], label: str, model, dtype: str = "float32") -> None:
    """One set-up's JSON object against the command's options and its printed table."""
    assert summary["model"] == str(model)
    assert (summary["device"], summary["dtype"], summary["threads"]) == ("cpu", dtype, 1)
    assert summary["context_len"] == 24
    assert lines[0] == (
        f"{label}: {model} torch.{dtype} on cpu, 1 threads, "
        f"speed-ups: {', '.join(summary['speedups']) or 'none'}"
    )
    t = summary["t_ms"]
    assert set(t) == {"1", "16"}
    for value in t.values():
        assert isinstance(value, float)
        assert value == float(f"{value:.{T_DIGITS}g}")
    ratio = summary["ratio_16_1"]
    assert is_rounded_ratio(
        ratio, t["16"], t["1"], half_unit(t["16"]), half_unit(t["1"]), RATIO_ERR
    )
    assert lines[1].split() == ["q", "t(q)", "ms", "p25", "p75", "t(q)/t(1)", "break-even"]
    rows = {row[0]: [float(cell) for cell in row[1:]] for row in map(str.split, lines[2:])}
    assert list(rows) == ["1", "16"]  # every q, ascending
    for q, (median, p25, p75, to_t1, break_even) in rows.items():
        assert median == pytest.approx(t[q], abs=0.05 + half_unit(t[q]))  # 1 decimal
        assert p25 <= median <= p75
        assert break_even == pytest.approx(to_t1 - 1, abs=2 * TABLE_ERR)
    assert rows["1"][3:] == [1.0, 0.0]
    assert rows["16"][3] == pytest.approx(ratio, abs=TABLE_ERR + RATIO_ERR)


def test_bench_steps_prints_table_and_json_last(capsys, saved_model):
    result, tables = bench_steps(capsys, saved_model, "--compare")
    assert set(result) == {*KEYS, "stock"}
    stock = result.pop("stock")
    assert set(stock) == KEYS
    assert list(tables) == ["fast", "stock"]
    check_setup(result, tables["fast"], "fast", saved_model)
    check_setup(stock, tables["stock"], "stock", saved_model)
    assert stock["speedups"] == []  # transformers' own model, for reference


def test_bench_steps_stock_alone(capsys, saved_model):
    result, tables = bench_steps(capsys, saved_model, "--stock")
    assert set(result) == KEYS
    assert list(tables) == ["stock"]
    check_setup(result, tables["stock"], "stock", saved_model)
    assert result["speedups"] == []
    assert result["batch"] == 1


def test_bench_steps_at_a_batch_size(capsys, saved_model):
    """One curve of the engine's cost surface: `--batch` sequences a pass, each its own cache."""
    result, tables = bench_steps(capsys, saved_model, "--batch", "3")
    assert result["batch"] == 3
    check_setup(result, tables["fast"], "fast", saved_model)


def test_bench_steps_vs_another_dtype(capsys, saved_model):
    """`--vs-dtype`: the same model in a second dtype, interleaved, and t(q) ratios to it; the
    default dtype is what the engine loads ("auto")."""
    result, tables = bench_steps(capsys, saved_model, "--dtype", "auto", "--vs-dtype", "float64")
    assert set(result) == {*KEYS, "vs_dtype", "ratio_vs_dtype"}
    other = result.pop("vs_dtype")
    assert list(tables) == ["fast", "vs_dtype"]
    check_setup(result, tables["fast"], "fast", saved_model, auto_dtype("cpu"))
    check_setup(other, tables["vs_dtype"], "vs_dtype", saved_model, "float64")
    ratios = result.pop("ratio_vs_dtype")
    assert set(ratios) == {"1", "16"}
    for q, ratio in ratios.items():
        t, u = result["t_ms"][q], other["t_ms"][q]
        assert is_rounded_ratio(ratio, t, u, half_unit(t), half_unit(u), RATIO_ERR)


@pytest.mark.parametrize(
    ("qs", "message"), [("1,x", "comma-separated integers"), ("0,4", "positive integers")]
)
def test_bench_steps_rejects_bad_qs(capsys, qs, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench-steps", "--qs", qs])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
