"""The markdown table every command prints."""

from adalora_ablation.analysis.markdown import table


def test_table_rows_and_escaped_pipes():
    assert table(["a", "b"], [[1, "x|y"], ["", None]]).splitlines() == [
        "| a | b |", "|---|---|", "| 1 | x/y |", "|  | None |"]
