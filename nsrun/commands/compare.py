"""``nsrun-compare``: when does grokking set in, per config, with what uncertainty?

    nsrun-compare multirun/2026-11-25/10-00-00                      # baseline: the reg=none group, if any
    nsrun-compare multirun/wd --baseline optim.weight_decay=0.1 --threshold 0.85 --smooth 3

Finds the finished runs under the given run or sweep directories, groups them by their science key minus
the seed (:mod:`nsrun.analysis.runs`), and writes per group the median onset step with a bootstrap
interval, the runs that never reached it, the speedup against a baseline group in steps and in training
seconds, and the seeds per arm that would settle each comparison (:mod:`nsrun.analysis.seeds_needed`), and
the lag between stability onset and accuracy onset: a table on stdout, ``compare.csv``,
``runs.csv``, ``compare.md`` and ``overlay.png``. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from nsrun.analysis import figures, report
from nsrun.analysis.runs import (
    choose_baselines,
    default_baseline,
    describe_selector,
    group_runs,
    load_runs,
    parse_selector,
    run_onsets,
    unknown_onset_notes,
)
from nsrun.analysis.seeds_needed import PAPER_FEWER, SEEDS_RULE, group_seeds
from nsrun.analysis.stats import group_statistics
from nsrun.science.onsets import OnsetRule, stability_key

PROG = "nsrun-compare"


class NothingToCompare(Exception):
    """No finished run could be read: nothing can be computed."""


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"{PROG}: error: {message} (see {PROG} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Compare grokking onsets of nsrun runs, grouped by config "
                                "minus seed, with bootstrap confidence intervals.")
    p.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories (searched recursively)")
    p.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                   help="the baseline group, e.g. reg.name=none or optim.weight_decay=1.0 (repeat to AND); "
                        "default: the group trained with reg=none, when there is one")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="accuracy onset: first step from which val_acc stays >= this (default 0.95)")
    p.add_argument("--target-loss", type=float, default=None,
                   help="onset from val_loss instead: first step from which it stays <= this (next-token tasks)")
    p.add_argument("--stability", default=None, metavar="KEY",
                   help="stability metric in metrics.jsonl (default: the first stab_token_val_rho*)")
    p.add_argument("--stability-level", type=float, default=None,
                   help="stability onset = first step at or below this level (default: the steepest fall)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window (points) before the steepest fall")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--effect", type=float, default=PAPER_FEWER, metavar="FRACTION",
                   help="the effect (fraction fewer steps) whose seeds to settle are printed (default 0.267: the "
                        "paper's modular addition, ~4500 -> ~3300 steps)")
    p.add_argument("--include-unfinished", action="store_true", help="count runs without DONE as they stand")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: PATH/compare for one PATH, else ./compare)")
    return p


def onset_rule(args) -> OnsetRule:
    if args.target_loss is None and not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.n_boot < 100:
        raise ValueError(f"--n-boot must be >= 100, got {args.n_boot}")
    if args.smooth < 1:
        raise ValueError(f"--smooth must be >= 1, got {args.smooth}")
    if not 0 < args.effect < 1:
        raise ValueError(f"--effect must be in (0, 1), got {args.effect}")
    if args.target_loss is not None:
        return OnsetRule("val_loss", args.target_loss, args.stability_level, args.smooth)
    return OnsetRule("val_acc", args.threshold, args.stability_level, args.smooth)


def pick_baselines(groups, specs: list[str]) -> tuple[dict, str, int]:
    """``(baselines, description, exit code)``: the groups named by ``--baseline``, or by default the
    reg=none group (said in one line on stdout), or none (with how to name one)."""
    selector = parse_selector(specs)
    if not selector:
        selector = default_baseline(groups)
        if selector is None:
            if len(groups) > 1:
                print(f"{PROG}: no baseline: no group trained with reg=none (or every group is); name one with "
                      "--baseline KEY=VALUE, e.g. --baseline optim.weight_decay=1.0, for speedups")
            return {}, "none", 0
        print(f"{PROG}: baseline: the {describe_selector(selector)} group (no --baseline given; "
              "--baseline KEY=VALUE names another)")
    try:
        baselines, notes = choose_baselines(groups, selector)
    except LookupError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return {}, " ".join(specs) or describe_selector(selector), 2
    for note in notes:
        warn(note)
    return baselines, " ".join(specs) if specs else describe_selector(selector) + " (default)", 0


def compare(args) -> int:
    """Run a comparison; returns the exit code (2 when the input was bad, also with partial results)."""
    parse_selector(args.baseline)  # a malformed --baseline is refused before any work
    rule = onset_rule(args)
    runs, notes = load_runs(args.paths, args.include_unfinished, hint=" (--include-unfinished counts it)")
    for note in notes:
        warn(note)
    if not runs:
        raise NothingToCompare("no finished nsrun runs found under " + ", ".join(map(str, args.paths)))
    stab = args.stability
    if stab is None:
        stab = stability_key(set().union(*(r.rows[-1].keys() for r in runs)))
    elif not any(stab in row for r in runs for row in r.rows):
        warn(f"--stability {stab}: no run logs it; stability onsets left out")
    for r in runs:
        r.onsets = run_onsets(r, rule, stab)
    for note in unknown_onset_notes(runs, rule):
        warn(note)
    groups = group_runs(runs)
    tasks = sorted({g.task for g in groups})
    if len(tasks) > 1:
        warn(f"runs of {len(tasks)} tasks mixed ({', '.join(tasks)}): each group is compared only with a "
             "baseline of its own task")
    if rule.metric == "val_acc":
        for task in sorted({r.task for r in runs if "val_ppl" in r.rows[-1]}):
            warn(f"task {task} is next-token prediction: accuracy onset at {rule.level} may never be reached; "
                 "--target-loss sets a validation-loss target")
    baselines, baseline_desc, code = pick_baselines(groups, args.baseline)
    group_statistics(groups, baselines, args.n_boot, args.seed)
    group_seeds(groups, baselines, args.effect, args.seed)

    out = args.out or (args.paths[0] / "compare" if len(args.paths) == 1 and args.paths[0].is_dir()
                       else Path("compare"))
    out.mkdir(parents=True, exist_ok=True)
    settings = {"onset": rule.describe(), "stability onset": rule.describe_stability(stab),
                "baseline": baseline_desc,
                "intervals": f"percentile bootstrap over seeds, 95 %, {args.n_boot} resamples, seed {args.seed}",
                "seeds to settle": SEEDS_RULE,
                "seconds": "cumulative training seconds at the onset step (timing.jsonl; evaluation excluded)",
                "early stopping": "a run ended by stop=onset at the onset's metric and a level at least as strict "
                                  "keeps its onset, one that gave up is not reached, any other is unknown; steps "
                                  "spared = train.steps - last step (seconds estimated at the run's s/step)",
                "runs": f"{len(runs)} in {len(groups)} groups"}
    title = f"grokking onset: {len(runs)} runs in {len(groups)} groups"
    figures.save(figures.plot_onset_curves(groups, rule, stab, title), out, "overlay", ("png",))
    report.write_compare_csv(groups, out / "compare.csv")
    report.write_runs_csv(groups, out / "runs.csv")
    report.write_compare_markdown(groups, out / "compare.md", settings, "overlay.png")
    from rich.console import Console

    width = shutil.get_terminal_size((200, 24)).columns  # COLUMNS, else the terminal's, else 200 (a file)
    Console(width=width).print(report.compare_table(groups, f"grokking onset: {rule.describe()}", width))
    print(f"wrote {out / 'compare.csv'}, {out / 'runs.csv'}, {out / 'compare.md'}, {out / 'overlay.png'}")
    return code


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = compare(args)
    except (ValueError, NothingToCompare) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
