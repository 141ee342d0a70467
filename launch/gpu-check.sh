#!/usr/bin/env bash
# The GPU check of issue 18 (docs/performance.md, "GPU check"): everything nsrun's GPU paths need proven, in one
# script of about 8 minutes whose results land in one folder.
#
#   bash launch/gpu-check.sh prepare           # here, beforehand: wheels the GPU image lacks (hydra, ...) into .whl/
#   bash launch/gpu-check.sh                   # on the GPU machine (make gpu-check); carry .whl there
#   GPU_CHECK_DRY=1 bash launch/gpu-check.sh   # the same logic on the CPU with tiny settings (~2 min)
#
# Phases, in this order, each under a hard time limit so that the script always leaves what it measured:
#   facts   nvidia-smi, torch and package versions                                  -> gpu-check.log
#   bench   make bench's --quick preset on cuda (bench_cuda.json, bench.log)
#   modadd  the paper's full modadd setting (+experiment=modadd: p 113, Nanda model, 30 % train, full batch),
#           GPU_CHECK_SEEDS seeds of baseline, S 1 (the paper's regulariser), S 0, weight decay and GrokFast:
#           one vmapped stack of seeds per arm (train.parallel_seeds), the five arms as five jobs sharing the
#           GPU (hydra/launcher=local_gpus, jobs_per_gpu); in the background while the tests run; stopped with
#           SIGTERM (runs checkpoint and keep their metrics) at the budget's end -> modadd.log,
#           modadd-runs.tar.gz (run dirs without checkpoints, GPU use every 5 s, nsrun-compare's tables)
#   tests   pytest -m gpu (tests/test_gpu.py)                        -> pytest-gpu.xml, tests.log
# Results go to $OUT if set (at most 7 flat files, so that they come back from the GPU machine), else to
# gpu-check/DATE; the run dirs are built in GPU_CHECK_WORK (default /tmp/nsrun-gpu-check with OUT, else the
# results folder). Afterwards, on the CPU (the S 0 arm is in runs/modadd_s0, outside the figure's arms):
#   tar xzf modadd-runs.tar.gz -C DIR
#   python -m nsrun.commands.reproduce figures --only modadd --root DIR/runs --out results/DATE-gpu-modadd --no-influence
#   nsrun-compare DIR/runs/modadd DIR/runs/modadd_s0 --out results/DATE-gpu-modadd/compare
# Settings (environment): GPU_CHECK_BUDGET_S (480; dry 150), GPU_CHECK_PHASES ("bench modadd tests"),
# GPU_CHECK_BENCH_S (150), GPU_CHECK_TESTS_S (180), GPU_CHECK_SEEDS (5), PYTHON (python3).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
WHEELS="$ROOT/.whl"
NEEDED="hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 hydra-submitit-launcher==1.2.0"

if [ "${1:-}" = prepare ]; then  # pure-Python wheels of what the GPU image lacks (KINDS.md lists what it has)
    mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" $NEEDED &&
        "$PY" -m pip wheel -q --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3 || exit 1  # sdist only on PyPI
    ls -l "$WHEELS"
    exit 0
fi

DRY=${GPU_CHECK_DRY:-0}
[ "$DRY" = 1 ] && DEFAULT_BUDGET=150 || DEFAULT_BUDGET=480
BUDGET=${GPU_CHECK_BUDGET_S:-$DEFAULT_BUDGET}
PHASES=${GPU_CHECK_PHASES:-bench modadd tests}
SEEDS=${GPU_CHECK_SEEDS:-5}
RESERVE=45  # seconds kept at the end for nsrun-compare and packing
STAMP=$(date +%Y-%m-%d-%H%M%S)
if [ -n "${OUT:-}" ]; then
    RESULTS=$OUT
    WORK=${GPU_CHECK_WORK:-/tmp/nsrun-gpu-check}
else
    RESULTS=gpu-check/$STAMP$([ "$DRY" = 1 ] && echo -dry)
    WORK=${GPU_CHECK_WORK:-$RESULTS}
fi
mkdir -p "$RESULTS" "$WORK" || exit 1
RESULTS=$(cd "$RESULTS" && pwd)
WORK=$(cd "$WORK" && pwd)
LOG="$RESULTS/gpu-check.log"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # nsrun from this tree (no pip install on the GPU machine)

PYTEST_ON_SIGINT='import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))'
say() { echo "[gpu-check $(date +%H:%M:%S) +$((SECONDS))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - SECONDS)); }
wanted() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
limit() { local l; l=$(left); l=$((l - RESERVE)); [ "$1" -lt "$l" ] && l=$1; echo $((l > 10 ? l : 10)); }
limited() {  # SECONDS SIGNAL LOG CMD...: CMD under a hard time limit, then end whatever it left running
    local seconds=$1 sig=$2 log=$3 pid rc
    shift 3
    timeout -s "$sig" -k 20 "$seconds" "$@" >"$log" 2>&1 &
    pid=$!
    wait "$pid"
    rc=$?
    kill -KILL -- "-$pid" 2>/dev/null  # timeout leads its own process group: a pool's workers left behind
    return "$rc"
}
finish() { # phase NAME RC T0: one line with its exit status (124: its time limit stopped it)
    local how="exit $2"
    [ "$2" = 124 ] && how="stopped at its time limit (exit 124)"
    say "$1: $how after $((SECONDS - $3)) s"
}

say "nsrun GPU check: results in $RESULTS, run dirs in $WORK, budget ${BUDGET}s, phases '$PHASES', dry=$DRY"
if ! "$PY" -c "import hydra, omegaconf, submitit, hydra_plugins.hydra_submitit_launcher" 2>/dev/null; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        say "installing the carried wheels of .whl/ into $WORK/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            "$WHEELS"/*.whl >>"$LOG" 2>&1
        export PYTHONPATH="$WORK/site:$PYTHONPATH"
    fi
fi

# -- facts --------------------------------------------------------------------------------------------------
{
    echo "--- date, tree"
    date -u +%Y-%m-%dT%H:%M:%SZ
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "no git here"
    echo "--- nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
        nvidia-smi
    else
        echo "no nvidia-smi"
    fi
    echo "--- python, torch, packages; cores"
    "$PY" - <<'EOF'
import importlib.metadata as md, os, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs",
          "matmul precision", torch.get_float32_matmul_precision(), "tf32", torch.backends.cuda.matmul.allow_tf32)
for name in ("hydra-core", "omegaconf", "submitit", "hydra-submitit-launcher", "numpy", "matplotlib", "pytest"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
print("cores", len(os.sched_getaffinity(0)))
EOF
} >>"$LOG" 2>&1
if [ "$DRY" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "no CUDA device visible to $PY: stopping (GPU_CHECK_DRY=1 checks the script on the CPU)"
    exit 1
fi
"$PY" -c "import nsrun.runner.train, hydra" >>"$LOG" 2>&1 || { say "nsrun does not import: see $LOG"; exit 1; }
grep -E "^(python|gpu|NVIDIA|name,|cores)" "$LOG" | sed 's/^/    /'

# -- bench --------------------------------------------------------------------------------------------------
if wanted bench; then
    t0=$SECONDS
    if [ "$DRY" = 1 ]; then bench=(--tiny --quick --device cpu --out "$RESULTS/bench_dry.json")
    else bench=(--quick --device cuda --out "$RESULTS/bench_cuda.json"); fi
    say "bench: python -m nsrun.commands.bench ${bench[*]} (limit $(limit "${GPU_CHECK_BENCH_S:-150}") s)"
    limited "$(limit "${GPU_CHECK_BENCH_S:-150}")" TERM "$RESULTS/bench.log" \
        "$PY" -m nsrun.commands.bench "${bench[@]}"  # bench.json is written after each section
    finish bench $? "$t0"
    grep -E "^\|.*(regularised / baseline|steps/s|K=(8|32) vmap|stability logging / training|fast / plain)" \
        "$RESULTS/bench.log" | head -n 30
fi

# -- modadd (background) --------------------------------------------------------------------------------------
MODADD_PID=
if wanted modadd; then
    common=(+experiment=modadd seed=0 "train.parallel_seeds=$SEEDS" train.parallel_backend=vmap
            hydra/launcher=local_gpus)
    if [ "$DRY" = 1 ]; then  # tiny: the CPU stands in; the pool pins its jobs to a pretend GPU id
        common+=(task.p=23 model=tiny train.steps=300 train.eval_every=50 train.checkpoint_every=100
                 stop.patience=100 stability.n_examples=64 train.device=cpu "hydra.launcher.gpus=[0]")
    fi
    modadd_limit=$(($(left) - RESERVE))
    say "modadd: ${#common[@]} common overrides, $SEEDS seeds per arm; 5 jobs on the GPU; limit ${modadd_limit} s"
    (
        # SIGTERM: each run writes a checkpoint and stops; its metrics so far stay
        limited "$modadd_limit" TERM "$WORK/modadd-arms.log" "$PY" -m nsrun.commands.nsrun -m "${common[@]}" \
            reg=none,stability,grokfast,weight_decay hydra.launcher.jobs_per_gpu=4 "hydra.sweep.dir=$WORK/runs/modadd" &
        arms=$!
        limited "$modadd_limit" TERM "$WORK/modadd-s0.log" "$PY" -m nsrun.commands.nsrun -m "${common[@]}" \
            reg=stability reg.S=0 hydra.launcher.jobs_per_gpu=1 "hydra.sweep.dir=$WORK/runs/modadd_s0" &
        s0=$!
        wait $arms; rc_arms=$?; wait $s0; rc_s0=$?
        echo "arms exit $rc_arms, S 0 exit $rc_s0 (124: stopped at the time limit)" >"$WORK/modadd.rc"
    ) &
    MODADD_PID=$!
    MODADD_T0=$SECONDS
    USAGE_PID=
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$WORK/gpu-usage.csv" 2>&1 &
        USAGE_PID=$!
    fi
fi

# -- tests --------------------------------------------------------------------------------------------------
if wanted tests; then
    t0=$SECONDS
    [ "$DRY" = 1 ] && export NSRUN_GPU_TEST_DEVICE=cpu
    say "tests: pytest -m gpu tests/test_gpu.py (limit $(limit "${GPU_CHECK_TESTS_S:-180}") s)"
    # SIGINT, with Python's handler put back (a shell may start background jobs with SIGINT ignored): pytest
    # stops and still writes its junit xml
    limited "$(limit "${GPU_CHECK_TESTS_S:-180}")" INT "$RESULTS/tests.log" "$PY" -c "$PYTEST_ON_SIGINT" \
        -m gpu tests/test_gpu.py -v -rs -p no:cacheprovider --junitxml="$RESULTS/pytest-gpu.xml"
    finish tests $? "$t0"
    tail -n 3 "$RESULTS/tests.log"
fi

# -- modadd: wait, summarise, pack ----------------------------------------------------------------------------
if [ -n "$MODADD_PID" ]; then
    wait "$MODADD_PID"
    [ -n "$USAGE_PID" ] && kill "$USAGE_PID" 2>/dev/null
    say "modadd: $(cat "$WORK/modadd.rc" 2>/dev/null) after $((SECONDS - MODADD_T0)) s"
    cat "$WORK/modadd-arms.log" "$WORK/modadd-s0.log" >"$RESULTS/modadd.log" 2>/dev/null
    {
        echo "run dirs: steps logged, DONE"
        for d in "$WORK"/runs/modadd*/*/seed_*; do
            [ -d "$d" ] || continue
            echo "${d#"$WORK"/} last step $(tail -n 1 "$d/metrics.jsonl" 2>/dev/null | cut -c1-14)" \
                 "$([ -f "$d/DONE" ] && echo "DONE $(head -c 60 "$d/DONE" | tr '\n' ' ')" || echo "no DONE")"
        done
    } >"$WORK/progress.txt"
    cat "$WORK/progress.txt" >>"$LOG"
    limited $(($(left) > 25 ? $(left) - 15 : 10)) TERM "$WORK/compare.txt" "$PY" -m nsrun.commands.compare \
        "$WORK/runs/modadd" "$WORK/runs/modadd_s0" --include-unfinished --n-boot 2000 --out "$WORK/compare"
    say "modadd: nsrun-compare (unfinished runs counted as they stand) exit $?"
    sed -n '/^| group | task/,/^$/p' "$WORK/compare/compare.md" 2>/dev/null | cut -c1-240
    (   # no checkpoints but the first baseline run's, whose model the reproduction's theory figure reads
        cd "$WORK" || exit 1
        find runs -path "*/checkpoints" -prune -o -type f -print
        find runs/modadd -path "*reg=none,*/seed_0/checkpoints/last.pt" 2>/dev/null | head -n 1
        for f in gpu-usage.csv compare.txt progress.txt; do [ -f "$f" ] && echo "$f"; done
        [ -d compare ] && find compare -type f
    ) >"$WORK/packed.txt"
    tar czf "$RESULTS/modadd-runs.tar.gz" -C "$WORK" -T "$WORK/packed.txt"
    say "modadd: packed $(du -h "$RESULTS/modadd-runs.tar.gz" | cut -f1) into modadd-runs.tar.gz"
fi
say "done in $SECONDS s; results: $(cd "$RESULTS" && ls | tr '\n' ' ')"
