"""The tasks (one module each, constructed from plain keyword values): ``modadd.ModularArithmetic``,
``parity.SparseParity``, ``wikitext2.WikiText2``; the interface they share is ``base.Task``. A config selects
one through the runner's schema (nsrun/runner/config/task.py)."""
