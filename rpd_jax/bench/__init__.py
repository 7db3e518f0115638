"""Benchmarks: training, Octo teacher and ManiSkill throughput, and the server-hop baseline."""

import dataclasses
from typing import Any, Callable, Mapping, Sequence, Union

Format = Union[str, Callable[[Any], str]]  # a format spec ("{:.2f}") or a function of the value


def table_row(cells: Sequence[Any]) -> str:
  """One markdown table row of the cells (str() of each)."""
  return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table: the header row, its rule, then the rows."""
  return "\n".join([table_row(headers), "|" + "---|" * len(headers)] +
                   [table_row(r) for r in rows])


@dataclasses.dataclass(frozen=True)
class Table:
  """A benchmark's table: its columns (row keys), their headers, and how values print.

  ``formats[column]`` formats that column's values; other floats print with ``float_format``,
  anything else with str(); a missing value is an empty cell.
  """
  columns: Sequence[str]
  headers: Sequence[str]
  formats: Mapping[str, Format] = dataclasses.field(default_factory=dict)
  float_format: str = "{:.2f}"

  def cells(self, row: Mapping[str, Any]) -> list[str]:
    out = []
    for column in self.columns:
      value = row.get(column)
      fmt = self.formats.get(column, self.float_format if isinstance(value, float) else "{}")
      out.append("" if value is None else fmt(value) if callable(fmt) else fmt.format(value))
    return out

  def row(self, row: Mapping[str, Any]) -> str:
    """One row as a markdown line (for progress as rows are measured)."""
    return table_row(self.cells(row))

  def markdown(self, rows: Sequence[Mapping[str, Any]]) -> str:
    return markdown_table(self.headers, [self.cells(r) for r in rows])
