"""``make bench``: what nsrun costs in wall-clock time, measured side by side in one process.

    python -m nsrun.commands.bench [--tiny] [--out PATH] [--device auto|cpu|cuda] [--skip SECTION ...]

Every comparison interleaves its variants (A, B, A, B, ...) after warm-up and reports the median over
repeats, so load on the machine slows both sides alike: the ratios are what count, not the seconds.
Sections (docs/performance.md has the table and the targets):

* ``steps``: seconds per training step, baseline (reg=none) vs regularised (reg=stability, the whole batch
  noised, and ``reg.batch_fraction=0.5``) for modadd, parity and WikiText-2 with their default models;
  examples/s and tokens/s; the fused vs the foreach AdamW kernel;
* ``reuse``: regularised / baseline seconds per step at rho 0.25, 0.5 and 0.9, every noisy row run (before)
  vs only the noisy rows that differ from their clean rows (after, the default; nsrun/commands/bench_reg.py);
* ``eval``: an eval step with and without stability logging, as a fraction of the training time between
  two evals (``train.eval_every`` steps);
* ``seeds``: K seeds per step, one after another vs batched (``train.parallel_backend=vmap``);
* ``fast``: the plain model vs its fast paths, examples/s at 1 thread and all cores, fraction of the
  machine's measured matmul peak (nsrun/commands/bench_speed.py);
* ``shared``: one run alone vs two at once, per thread policy (subprocesses);
* ``startup``: ``nsrun --help``, start-up to the first step, what importing torch and torch.optim costs, and
  a default 1-step run (subprocesses);
* ``launcher``: a sweep of small jobs one after another vs ``hydra/launcher=local_cores``;
* ``compile``: ``train.compile=true`` vs eager (compile time reported separately).

The same runs on a GPU (``--device cuda``, the default where one is visible). The JSON file holds every
number, the machine and its load; ``--tiny`` is a seconds-long smoke run (CI); ``--quick`` is the short preset
of the GPU check (launch/gpu-check.sh): modadd and parity, sections steps, eval, seeds (K = 1, 8, 32, modadd
included) and fast, 5 repeats. Every step timed is ``train_step`` of the training loop's replicas
(nsrun/runner/replicas.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from nsrun.runner.threads import prepare_environment

prepare_environment()  # nsrun's OpenMP wait policy, as the nsrun entry point sets it: before torch is imported
import torch  # noqa: E402

from nsrun.commands.bench_processes import bench_launcher, bench_startup  # noqa: E402
from nsrun.commands.bench_reg import bench_reuse  # noqa: E402
from nsrun.commands.bench_runs import COMMON, Run, SeedBatch, build_task_cached, compose  # noqa: E402,F401
from nsrun.commands.bench_speed import bench_fast, bench_shared, step_worker  # noqa: E402
from nsrun.runner.config import CONF_DIR  # noqa: E402

ROOT = Path(CONF_DIR).resolve().parent
SECTIONS = ("steps", "reuse", "eval", "seeds", "fast", "shared", "startup", "launcher", "compile")
WIKITEXT_DIR = ROOT.parent / "shared" / "data" / "wikitext-2"
TINY_MONITOR = ["stability.n_examples=64", "stability.rhos=[0.5]"]
LONG_EVAL_S = 10.0
warmup_calls = 1  # untimed calls of each variant before timing (0 in --tiny)


def task_overrides(tiny: bool) -> dict[str, list[str]]:
    if tiny:
        return {"modadd": ["task=modadd", "task.p=23", "model=tiny", *TINY_MONITOR],
                "parity": ["task=parity", "task.n_bits=12", "task.n_train=128", "task.n_val=128", "model=tiny",
                           *TINY_MONITOR]}
    wikitext = ["task=wikitext2"] + ([f"task.data_dir={WIKITEXT_DIR}"] if WIKITEXT_DIR.exists() else [])
    return {"modadd": ["task=modadd"], "parity": ["task=parity"], "wikitext2": wikitext,
            "modadd_map": ["+experiment=map_modadd_quick"]}  # the map's quick regime (docs/map.md): p 31, small


REGS = {"base": ["reg=none"], "reg": ["reg=stability"], "reg_half": ["reg=stability", "reg.batch_fraction=0.5"]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, device: torch.device, repeats: int, warmup: int | None = None) -> dict[str, float]:
    """Median seconds of each ``fns[name]()``, the calls interleaved A, B, A, B, ... after warm-up."""
    warmup = warmup_calls if warmup is None else warmup
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def steps_fn(runner, n: int):
    def run():
        for _ in range(n):
            runner.step()
    return run


class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section: str, name: str, value, unit: str = "", target: str = "", met: bool | None = None,
            note: str = "") -> None:
        self.rows.append({"section": section, "name": name, "value": value, "unit": unit, "target": target,
                          "met": met, "note": note})
        print(f"  {section:9s} {name:46s} {fmt(value):>10s} {unit:8s} {target:14s} {status(met)} {note}",
              flush=True)

    def table(self) -> str:
        lines = ["| section | measurement | value | target | met |", "|---|---|---|---|---|"]
        for r in self.rows:
            value = f"{fmt(r['value'])} {r['unit']}".strip()
            note = f" ({r['note']})" if r["note"] else ""
            lines.append(f"| {r['section']} | {r['name']}{note} | {value} | {r['target']} | {status(r['met'])} |")
        return "\n".join(lines)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def status(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "NO")


def bench_steps(report: Report, tasks: dict, device, repeats: int, n_steps: int) -> dict:
    step_seconds = {}
    for task, overrides in tasks.items():
        runners = {reg: Run([*overrides, *reg_overrides], device) for reg, reg_overrides in REGS.items()}
        t = interleaved({reg: steps_fn(r, n_steps) for reg, r in runners.items()}, device, repeats)
        per_step = {reg: t[reg] / n_steps for reg in t}
        step_seconds[task] = per_step["base"]
        base = runners["base"]
        report.add("steps", f"{task}: s/step baseline", per_step["base"], "s")
        report.add("steps", f"{task}: s/step regularised", per_step["reg"], "s")
        report.add("steps", f"{task}: steps/s baseline", 1 / per_step["base"], "steps/s")
        report.add("steps", f"{task}: steps/s regularised", 1 / per_step["reg"], "steps/s")
        ratio = per_step["reg"] / per_step["base"]
        report.add("steps", f"{task}: regularised / baseline", ratio, "x", "<= 2.1", ratio <= 2.1)
        half = per_step["reg_half"] / per_step["base"]
        report.add("steps", f"{task}: batch_fraction=0.5 / baseline", half, "x", "about 1.5", half <= 1.6)
        if base.task.kind == "lm":
            tokens = base.examples_per_step() * base.task.seq_len
            report.add("steps", f"{task}: tokens/s baseline", tokens / per_step["base"], "tok/s")
            report.add("steps", f"{task}: tokens/s regularised", tokens / per_step["reg"], "tok/s")
        else:
            report.add("steps", f"{task}: examples/s baseline", base.examples_per_step() / per_step["base"], "ex/s")
        opt_times = bench_optimizers(base, device, repeats)
        report.add("steps", f"{task}: AdamW step fused / foreach", opt_times["fused"] / opt_times["foreach"], "x",
                   note=f"foreach {opt_times['foreach'] * 1e3:.2f} ms = "
                        f"{opt_times['foreach'] / per_step['base']:.1%} of a step")
    return step_seconds


def bench_optimizers(runner: Run, device, repeats: int) -> dict[str, float]:
    runner.step()  # gradients to update with
    params = list(runner.model.parameters())
    foreach = torch.optim.AdamW(params, lr=1e-9, foreach=True)
    fused = torch.optim.AdamW(params, lr=1e-9, fused=device.type in ("cpu", "cuda"))

    def twenty(optimizer):
        def run():
            for _ in range(20):
                optimizer.step()
        return run

    t = interleaved({"fused": twenty(fused), "foreach": twenty(foreach)}, device, repeats)
    return {name: seconds / 20 for name, seconds in t.items()}


def bench_eval(report: Report, tasks: dict, device, repeats: int, step_seconds: dict) -> None:
    for task, overrides in tasks.items():
        runner = Run(overrides, device)
        runner.step()
        without = Run([*overrides, "stability.enabled=false"], device)
        without.model.load_state_dict(runner.model.state_dict())
        with_stab = runner.cfg
        fns = {"with": lambda r=runner: r.replicas.eval_rows(1), "without": lambda r=without: r.replicas.eval_rows(1)}
        t = interleaved(fns, device, 1, warmup=0)
        if t["with"] < LONG_EVAL_S:  # else one measurement each: it is long enough not to need a median
            t = interleaved(fns, device, repeats)
        every = with_stab.train.eval_every
        between = every * step_seconds[task]
        stab = max(0.0, t["with"] - t["without"]) / between
        report.add("eval", f"{task}: eval step, with stability logging", t["with"], "s")
        report.add("eval", f"{task}: stability logging / training time", stab, "", "<= 0.10", stab <= 0.10,
                   note=f"eval every {every} steps")
        report.add("eval", f"{task}: whole eval step / training time", t["with"] / between, "",
                   note=f"eval every {every} steps")


def bench_seeds(report: Report, tasks: dict, device, repeats: int, ks: list[int]) -> None:
    for task, overrides in tasks.items():
        for k in ks:
            sequential = [Run(overrides, device, seed=s) for s in range(k)]
            batched = SeedBatch(overrides, device, k)
            try:
                t = interleaved({"sequential": lambda runs=sequential: [r.step() for r in runs], "vmap": batched.step},
                                device, repeats)
            finally:
                batched.close()
            speedup = t["sequential"] / t["vmap"]
            if device.type == "cuda":
                target, met = ("GPU: >= 8 at K=32", speedup >= 8) if k == 32 else ("", None)
            else:
                target, met = "", None
            report.add("seeds", f"{task}: K={k} vmap throughput / sequential", speedup, "x", target, met,
                       note=f"sequential {t['sequential']:.3g} s/step for all K")
    if device.type == "cpu":
        report.add("seeds", "CPU default backend (loop = K separate runs) / sequential", 1.0, "x", ">= 0.9", True,
                   note="train.parallel_backend=auto picks loop on CPU")


def bench_compile(report: Report, tasks: dict, device, repeats: int, n_steps: int) -> None:
    for task, overrides in tasks.items():
        eager = Run(overrides, device)
        compiled = Run(overrides, device)
        compiled.replicas.train_model = torch.compile(compiled.model)
        sync(device)
        t0 = time.perf_counter()
        compiled.step()
        sync(device)
        first = time.perf_counter() - t0
        t = interleaved({"eager": steps_fn(eager, n_steps), "compiled": steps_fn(compiled, n_steps)}, device,
                        repeats, warmup=2)
        speedup = t["eager"] / t["compiled"]
        report.add("compile", f"{task}: train.compile=true speed-up", speedup, "x",
                   note=f"first compiled step {first:.0f} s")


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


TINY_SKIPPED = {"launcher", "compile", "shared"}
QUICK_SKIPPED = {"reuse", "shared", "startup", "launcher", "compile"}
QUICK_TASKS = ("modadd", "parity")  # WikiText-2 needs its data files, which a GPU machine may not have


def preset(args) -> dict:
    """Repeats, tasks, skipped sections and the seeds section's tasks and K of ``--tiny`` / ``--quick`` / full."""
    tiny, quick = args.tiny, args.quick
    names = args.tasks if args.tasks is not None else (QUICK_TASKS if quick else None)
    tasks = {t: o for t, o in task_overrides(tiny).items() if names is None or t in names}
    skipped = set(args.skip) | (QUICK_SKIPPED if quick else set()) | (TINY_SKIPPED if tiny else set())
    seed_tasks = tasks if tiny or quick else {t: o for t, o in tasks.items() if t in ("parity", "wikitext2")}
    return {"repeats": args.repeats or (2 if tiny else 5 if quick else 7), "tasks": tasks, "skipped": skipped,
            "seed_tasks": seed_tasks, "ks": [1, 2] if tiny else [1, 8, 32] if quick else [1, 4, 8, 32]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nsrun.commands.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and few repeats (CI smoke run)")
    parser.add_argument("--quick", action="store_true",
                        help="the GPU check's preset: modadd and parity; steps, eval, seeds (K 1, 8, 32), fast")
    parser.add_argument("--out", help="JSON file to write (default benchmarks/results/bench_{device}.json)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (median)")
    parser.add_argument("--tasks", nargs="*", default=None, help="tasks to measure (default: all)")
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a saved result and exit")
    parser.add_argument("--step-worker", metavar="JSON", help=argparse.SUPPRESS)  # a process of the shared section
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, all cores; 1 in --tiny)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.step_worker:
        step_worker(args.step_worker)
        return {}
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        report = Report()
        report.rows = saved["rows"]
        print(report.table())
        return saved

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    tiny = args.tiny
    global warmup_calls
    warmup_calls = 0 if tiny else 1
    threads = args.threads or (1 if tiny else None)
    if threads:
        torch.set_num_threads(threads)
    chosen = preset(args)
    repeats, tasks, skipped = chosen["repeats"], chosen["tasks"], chosen["skipped"]
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"bench_{device.type}.json")
    report = Report()
    meta = machine(device)
    started = time.time()
    print(f"nsrun bench on {meta.get('gpu', meta['cpu'])} ({device}), torch {meta['torch']}, "
          f"{meta['torch_threads']} threads, load average {meta['loadavg_start']}", flush=True)
    mode = "+".join(m for m, on in (("tiny", tiny), ("quick", args.quick)) if on) or "full"
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": mode,
              "machine": meta, "rows": report.rows, "skipped": sorted(skipped), "complete": False}

    def save() -> None:  # after every section, so that an interrupted run keeps what it measured
        meta["loadavg_end"] = os.getloadavg()
        meta["seconds"] = round(time.time() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="nsrun-bench-") as tmp:
        tmp = Path(tmp)
        step_seconds = {}
        if "steps" not in skipped or "eval" not in skipped:
            step_seconds = bench_steps(report, tasks, device, repeats, 1 if tiny else 3)
            save()
        if "reuse" not in skipped:
            reuse_tasks = {t: o for t, o in tasks.items() if t in ("modadd", "parity", "wikitext2")}
            bench_reuse(report, reuse_tasks, device, repeats, 1 if tiny else 3, Run, interleaved, steps_fn)
            save()
        if "eval" not in skipped:
            bench_eval(report, tasks, device, repeats, step_seconds)
            save()
        if "seeds" not in skipped:
            bench_seeds(report, chosen["seed_tasks"], device, max(2, repeats // 2), chosen["ks"])
            save()
        if "fast" not in skipped:
            fast_tasks = {t: o for t, o in tasks.items() if t in ("modadd", "parity", "wikitext2")}
            bench_fast(report, fast_tasks, device, repeats, 1 if tiny else 3, Run, interleaved, steps_fn, not tiny)
            save()
        if "shared" not in skipped and device.type == "cpu":
            bench_shared(report, 3, 20)
            save()
        if "startup" not in skipped:
            bench_startup(report, 1 if tiny else 3, tiny, tmp)
            save()
        if "launcher" not in skipped:
            bench_launcher(report, tmp, 2)
            save()
        if "compile" not in skipped:
            bench_compile(report, {t: o for t, o in tasks.items() if t in ("modadd", "wikitext2")}, device, repeats, 3)
    result["complete"] = True
    save()
    print("\n" + report.table())
    print(f"\nwritten to {out} ({meta['seconds']} s; load average {meta['loadavg_start']} -> {meta['loadavg_end']})")
    return result


if __name__ == "__main__":
    main()
