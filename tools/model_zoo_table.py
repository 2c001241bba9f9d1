#!/usr/bin/env python
"""Print the model-zoo table generated from the registry, or rewrite it inside README.md (--write README.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.registry import model_zoo_markdown  # noqa: E402
from zoo.utils.files import atomic_write_text  # noqa: E402

BEGIN, END = "<!-- model-zoo:begin -->", "<!-- model-zoo:end -->"


def replace_table(text: str, table: str) -> str:
    """Replace what lies between the model-zoo markers of `text` with `table`."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"README has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    """Print or write the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", metavar="README", help="rewrite the table inside this file")
    args = parser.parse_args(argv)
    table = model_zoo_markdown()
    if args.write:
        path = Path(args.write)
        atomic_write_text(path, replace_table(path.read_text(), table))
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
