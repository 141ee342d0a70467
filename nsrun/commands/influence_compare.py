"""``nsrun-influence-compare RUN_DIR...``: one table and one bound-vs-bound bar chart across models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "nsrun-influence-compare"


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    from nsrun.analysis.influence_report import (
        SUMMARY_COLUMNS,
        SUMMARY_JSON,
        load_summaries,
        plot_bound_bars,
        render_text,
        summary_table,
        write_csv,
    )

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="directories written by nsrun-influence")
    parser.add_argument("-o", "--out", type=Path, default=Path("results/influence"),
                        help="where bounds.png, summary.csv and table.txt go (default: results/influence)")
    parser.add_argument("--paper", action="store_true", help="add the paper's Table 1 bounds as reference bars")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if not (d / SUMMARY_JSON).is_file()]
    if missing:
        print(f"{PROG}: error: no {SUMMARY_JSON} in {', '.join(missing)} (run nsrun-influence there first)",
              file=sys.stderr)
        sys.exit(2)
    summaries = load_summaries(args.run_dirs)
    args.out.mkdir(parents=True, exist_ok=True)
    table = summary_table(summaries, title="Junta-like input dependence across models")
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    (args.out / "table.txt").write_text(render_text(table))
    write_csv(args.out / "summary.csv", [{k: s[k] for k in SUMMARY_COLUMNS} for s in summaries])
    plot_bound_bars(summaries, args.out / "bounds.png", paper=args.paper)
    print(f"{PROG}: wrote {args.out / 'bounds.png'}, summary.csv, table.txt")


if __name__ == "__main__":
    main()
