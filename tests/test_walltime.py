"""The cost map: cells priced by their own step cost, the wall-clock speedup and its verdict, the one-paragraph
answer, the CSV and the figure, from hand-made run dirs; the side-by-side pricing on real tiny configs."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest

from nsrun.analysis.maps import load_map, load_map_runs
from nsrun.analysis.walltime import answer, cost_points, write_walltime_report
from tests.conftest import CONF
from tests.test_map import write_run

FULL = ["reg=stability", "reg.S=0", "reg.gamma=2.0", "reg.rho=0.25"]
CHEAP = [*FULL, "reg.batch_fraction=0.5", "reg.every_k_steps=2"]
PRICES = {"baseline": 0.01, "S=0, gamma=2.0, rho=0.25": 0.02,
          "S=0, gamma=2.0, rho=0.25, batch fraction 0.5, every 2 steps": 0.0125}


@pytest.fixture(scope="module")
def cost_map(tmp_path_factory):
    """Baseline onsets 400-440; the full-cost cell 300-320 at 2x a step (fewer steps, more seconds); the cheap
    cell (batch fraction 0.5, every 2 steps) 100-120 at 1.25x (fewer steps and fewer seconds)."""
    root = tmp_path_factory.mktemp("walltime")
    spec = load_map("map_modadd_tiny", CONF, root=root)
    for seed in range(3):
        write_run(spec.root, "baseline", ["reg=none"], seed, 400 + 20 * seed)
        write_run(spec.root, "grid", FULL, seed, 300 + 10 * seed, seconds_per_step=0.05)
        write_run(spec.root, "grid", CHEAP, seed, 100 + 10 * seed, seconds_per_step=0.05)
    seen = []

    def price(cells):
        seen.append(sorted(c.label for c in cells))
        return PRICES

    mr = load_map_runs(spec, n_boot=1000, price_cells=price)
    return SimpleNamespace(mr=mr, seen=seen, points={p.label: p for p in cost_points(mr)})


def test_each_cell_is_priced_by_its_own_step_cost(cost_map):
    assert cost_map.seen == [sorted(PRICES)]  # asked once, with every cell, the levers' cell apart from the full one
    full, cheap = cost_map.points["S=0, gamma=2.0, rho=0.25"], cost_map.points[
        "S=0, gamma=2.0, rho=0.25, batch fraction 0.5, every 2 steps"]
    assert full.cost == pytest.approx(2.0) and cheap.cost == pytest.approx(1.25)
    assert full.seconds[0] == pytest.approx(310 * 0.02) and cheap.seconds[0] == pytest.approx(110 * 0.0125)
    assert full.speedup[0] == pytest.approx(420 * 0.01 / (310 * 0.02))
    assert cheap.speedup[0] == pytest.approx(420 * 0.01 / (110 * 0.0125))
    assert (full.verdict_steps, full.verdict_seconds) == ("faster", "slower")
    assert (cheap.verdict_steps, cheap.verdict_seconds) == ("faster", "faster")
    assert cheap.values["reg.batch_fraction"] == 0.5 and cheap.value("reg.every_k_steps") == 2
    assert full.value("reg.batch_fraction") == 1.0  # the default when the cell does not set it


def test_the_answer_names_the_cells_whose_interval_lies_above_one(cost_map):
    points = list(cost_map.points.values())
    text = answer(points)
    assert text.startswith("**S=0, gamma=2.0, rho=0.25, batch fraction 0.5, every 2 steps** groks faster")
    assert "gamma=2.0, rho=0.25**" not in text  # the full-cost cell is slower in seconds
    frontier = answer([p for p in points if "batch" not in p.label])
    assert frontier.startswith("No cell groks faster in wall-clock time") and "S=0, gamma=2.0, rho=0.25:" in frontier


def test_report_writes_the_table_the_csv_and_the_figure(cost_map, tmp_path):
    summary = write_walltime_report([cost_map.mr], tmp_path, {"commit": "test"})
    text = summary.read_text()
    for label in PRICES:
        assert f"| {label} |" in text
    rows = list(csv.DictReader((tmp_path / "cost_map.csv").open()))
    by_label = {r["cell"]: r for r in rows}
    cheap = by_label["S=0, gamma=2.0, rho=0.25, batch fraction 0.5, every 2 steps"]
    assert (cheap["reg.batch_fraction"], cheap["reg.every_k_steps"]) == ("0.5", "2")
    assert float(cheap["cost"]) == pytest.approx(1.25) and cheap["verdict_seconds"] == "faster"
    assert math.isclose(float(by_label["baseline"]["steps_median"]), 420)
    assert (tmp_path / "cost_map_map_modadd_tiny.png").stat().st_size > 10_000


def test_side_by_side_prices_come_from_each_cell_s_own_overrides(tmp_path):
    """The pricing rebuilds each cell's config from its first run's overrides (seed, logger and threads dropped)
    and times real training steps of every cell interleaved."""
    from nsrun.commands.map import cell_overrides_of, side_by_side_cell_seconds

    spec = load_map("map_modadd_tiny", CONF, root=tmp_path)
    cells = []
    for label, overrides in {"baseline": ["reg=none"], "cheap": CHEAP}.items():
        run = tmp_path / label
        (run / ".hydra").mkdir(parents=True)
        listed = [*overrides, "seed=3", "logger=none", "train.threads=1", "hydra.run.dir=x"]
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in listed))
        assert cell_overrides_of(run) == overrides
        cells.append(SimpleNamespace(label=label, runs=[SimpleNamespace(path=run)]))
    prices = side_by_side_cell_seconds(spec, cells, repeats=2, n_steps=4)
    assert set(prices) == {"baseline", "cheap"} and all(0 < s < 5 for s in prices.values())
