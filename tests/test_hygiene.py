"""The tests themselves: no timed asserts (wait for a condition with a bounded poll instead).

A timed assert compares a measured time with a bound (`assert elapsed < 2`,
`assert time.monotonic() < deadline`, `assert lv["p50_ms"] < 1000`): it fails on a slow or
busy machine with nothing wrong. An exception (a lower bound that causality guarantees, e.g. a
latency that includes a known sleep) carries `# timing-ok: <reason>` on the assert or the line
above it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCK = re.compile(r"\btime\.(monotonic|time|perf_counter|process_time)(_ns)?\s*\(")
# a measured time (a setting such as a probe's timeoutSeconds is not one)
MEASURED = re.compile(r"elapsed|\bwall|_ms\b|duration|latenc|\btook", re.IGNORECASE)
ALLOW = re.compile(r"#\s*timing-ok:\s*\S+(\s+\S+){2,}")  # a reason of three words or more
ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _is_zero(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in (0, 0.0, None)


def timed_asserts(source: str) -> list[tuple[int, str]]:
    """(line, source) of each assert comparing a clock or a measured time with a bound."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        text = ast.get_source_segment(source, node.test) or ""
        timed = bool(CLOCK.search(text))
        for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            operands = [cmp.left, *cmp.comparators]
            for op, left, right in zip(cmp.ops, operands, operands[1:]):
                if not isinstance(op, ORDERING) or _is_zero(left) or _is_zero(right):
                    continue  # `x > 0` says "was measured", not "was fast"
                sides = [
                    bool(MEASURED.search(ast.get_source_segment(source, s) or ""))
                    for s in (left, right)
                ]
                timed |= sides[0] != sides[1]  # a time against a bound, not time against time
        if not timed:
            continue
        first = max(node.lineno - 2, 0)  # the line above may carry the reason
        if not any(ALLOW.search(line) for line in lines[first : node.end_lineno]):
            found.append((node.lineno, lines[node.lineno - 1].strip()))
    return found


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_timed_asserts(path: Path) -> None:
    assert timed_asserts(path.read_text()) == [], f"timed asserts in {path.name}"


def test_the_check_finds_timed_asserts() -> None:
    bad = [
        "assert time.monotonic() - t0 < 2",
        "assert time.monotonic() < deadline, 'late'",
        "assert elapsed < 10",
        "assert wall < 20",
        'assert lv["p50_ms"] < 1000',
        'assert 0 < lv["elapsed_s"] <= budget',
        "assert took_seconds >= 3",
        "assert (\n    t_elapsed\n    < 5\n)",
        "assert ok and latency < 2",
        "assert elapsed < 10  # timing-ok: fast",  # a reason of one word is no reason
    ]
    for snippet in bad:
        assert timed_asserts(f"def f():\n    {snippet}\n"), snippet
    good = [
        'assert lv["p50_ms"] > 0 and lv["qps"] > 0',
        'assert lv["p50_ms"] <= lv["p90_ms"] <= lv["max_ms"]',
        'assert s["p50_ms"] == 50.5',
        "assert elapsed >= 0.5  # timing-ok: a lower bound, the level runs for its duration",
        "# timing-ok: the server sleeps 20 ms before answering\n    assert lat_ms >= 18",
        "assert requests < 200",
        'assert probe.get("timeoutSeconds", 1) >= wait + 3',  # a setting, not a measurement
    ]
    for snippet in good:
        assert timed_asserts(f"def f():\n    {snippet}\n") == [], snippet
