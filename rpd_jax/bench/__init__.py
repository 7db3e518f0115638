"""Benchmarks: training, Octo teacher and ManiSkill throughput, and the server-hop baseline."""

from typing import Any, Sequence


def table_row(cells: Sequence[Any]) -> str:
  """One markdown table row of the cells (str() of each)."""
  return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table: the header row, its rule, then the rows."""
  return "\n".join([table_row(headers), "|" + "---|" * len(headers)] +
                   [table_row(r) for r in rows])
