# nsrun: install, run, test. The CPU wheel of torch 2.13.0 is installed first where no torch is present,
# so that pip never pulls a multi-GB CUDA build; the project's torch range is satisfied by it.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: install torch test test-all lint run bench gpu-check slurm-up slurm-down reproduce-figures reproduce-figures-quick reproduce-lm-parity figures figures-lm-parity map map-report walltime walltime-report peers clean

torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"

install: torch
	$(PIP) install -e ".[dev,llm]"

run:
	nsrun task=modadd train.steps=500

test:
	$(PYTHON) -m pytest -q

test-all:
	$(PYTHON) -m pytest -q -m "not gpu"

bench:  # wall-clock costs side by side (docs/performance.md); writes benchmarks/results/bench_{cpu,cuda}.json
	$(PYTHON) -m nsrun.commands.bench $(BENCH_ARGS)

gpu-check:  # GPU tests, bench on cuda and the full modadd setting in ~8 min (launch/gpu-check.sh; docs/performance.md)
	PYTHON=$(PYTHON) bash launch/gpu-check.sh

lint:  # style (ruff) and the layers of docs/architecture.md (import-linter contracts in pyproject.toml)
	$(PYTHON) -m ruff check nsrun tests hydra_plugins
	lint-imports

# the paper's experiments (conf/experiment/), figures and results table (nsrun/commands/reproduce.py; docs/reproduction.md).
# Rerunning skips finished runs and resumes unfinished ones (fixed sweep dirs under runs/reproduce[-quick]/).
#   make reproduce-figures LAUNCHER=submitit_slurm      # full sweeps on SLURM, then figures into results/reproduce
#   make reproduce-figures-quick OUT=results/2026-11-25-quick   # reduced settings, about 20 min on 2 CPU cores
#   make figures [QUICK=1]                              # figures + summary from existing run dirs, no training
LAUNCHER ?= local_cores
OUT ?=
QUICK ?=
reproduce-figures:
	$(PYTHON) -m nsrun.commands.reproduce run --launcher=$(LAUNCHER) $(if $(OUT),--out $(OUT))

reproduce-figures-quick:
	$(PYTHON) -m nsrun.commands.reproduce run --quick --launcher=$(LAUNCHER) $(if $(OUT),--out $(OUT))

figures:
	$(PYTHON) -m nsrun.commands.reproduce figures $(if $(QUICK),--quick) $(if $(OUT),--out $(OUT))

# the map of where the regulariser helps on modular addition (docs/map.md): the arms of
# conf/experiment/map_*.yaml (rerunning skips finished runs), then heatmaps, tables and summary.md in MAP_OUT.
#   make map                      # both regimes, one single-threaded job per core
#   make map MAP_ARGS="--only grid,baseline"    make map-report MAP_OUT=results/2026-11-29-map
MAP_OUT ?= results/$(shell date +%Y-%m-%d)-map
MAP_ARGS ?=
map:
	$(PYTHON) -m nsrun.commands.map run --launcher=$(LAUNCHER) --out $(MAP_OUT) $(MAP_ARGS)

map-report:
	$(PYTHON) -m nsrun.commands.map report --out $(MAP_OUT) $(MAP_ARGS)

# the cost map (docs/walltime.md): a regularised step's price against the steps it saves, in seconds
WALLTIME_OUT ?= results/$(shell date +%Y-%m-%d)-walltime

walltime:
	$(PYTHON) -m nsrun.commands.walltime run --launcher=$(LAUNCHER) --out $(WALLTIME_OUT) $(WALLTIME_ARGS)

walltime-report:
	$(PYTHON) -m nsrun.commands.walltime report --out $(WALLTIME_OUT) $(WALLTIME_ARGS)

# the equal-budget searches (docs/experiments.md#peers): one 24-trial Optuna study per method, seeds 0-1 a trial,
# in sequence (each runs 2 trials at a time; a rerun skips finished trials)
PEERS ?= baseline grokfast token_s1 token_s0 gaussian_s1 gaussian_s0

peers:
	for m in $(PEERS); do nsrun -m hparams_search=peers_$$m || exit 1; done

# WikiText-2 (7 arms) and sparse parity at n = 10, 20, 40, 100 (3 arms each), 5 seeds (docs/reproduction.md):
# 95 runs of 1-4 min each on one thread, with their own summary (OUT, default results/reproduce-lm-parity).
#   make reproduce-lm-parity [LAUNCHER=basic] [OUT=results/DATE-lm-parity]   # sweeps (finished runs skipped), figures
#   make figures-lm-parity [OUT=...]                                         # figures + summary from the run dirs
LM_PARITY = --only wikitext2,parity_n10,parity_n20,parity_n40,parity_n100 --no-theory --no-influence
reproduce-lm-parity:
	$(PYTHON) -m nsrun.commands.reproduce run $(LM_PARITY) --launcher=$(LAUNCHER) --out $(or $(OUT),results/reproduce-lm-parity)

figures-lm-parity:
	$(PYTHON) -m nsrun.commands.reproduce figures $(LM_PARITY) --out $(or $(OUT),results/reproduce-lm-parity)

# a local single-node SLURM cluster (root; installs Debian's slurm + munge when missing): docs/slurm.md
slurm-up:
	bash launch/slurm-local.sh up

slurm-down:
	bash launch/slurm-local.sh down

clean:
	rm -rf outputs multirun .pytest_cache
