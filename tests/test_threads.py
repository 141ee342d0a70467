"""The thread policy (nsrun/runner/threads.py): core limits from affinity, cgroup quotas and SLURM; the wait
policy set before torch starts; what a run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from nsrun.runner.threads import (
    SET_BY_NSRUN,
    affinity_cores,
    apply_thread_policy,
    available_cores,
    cgroup_cpu_limit,
    core_limits,
    prepare_environment,
    resolve_threads,
    slurm_cpus,
    wait_policy,
    wait_policy_env,
)
from tests.conftest import ROOT


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_quota_is_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    write(proc, "0::/job/step")
    write(root / "job" / "cpu.max", "150000 100000")
    write(root / "job" / "step" / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(root, proc) == 1.5
    write(root / "job" / "step" / "cpu.max", "50000 100000")
    assert cgroup_cpu_limit(root, proc) == 0.5


def test_cgroup_v2_in_a_hybrid_layout(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    write(proc, "1:cpu:/\n0::/box")
    write(root / "unified" / "box" / "cpu.max", "300000 100000")
    assert cgroup_cpu_limit(root, proc) == 3.0


def test_cgroup_v1_quota_and_the_container_root(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    write(proc, "4:memory:/x\n3:cpu,cpuacct:/slurm/uid_0/job_7")
    write(root / "cpu,cpuacct" / "slurm" / "uid_0" / "job_7" / "cpu.cfs_quota_us", "200000")
    write(root / "cpu,cpuacct" / "slurm" / "uid_0" / "job_7" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(root, proc) == 2.0
    # a container sees its own cgroup at the controller's root, not under the path /proc names
    root2 = tmp_path / "cg2"
    write(root2 / "cpu,cpuacct" / "cpu.cfs_quota_us", "400000")
    write(root2 / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(root2, proc) == 4.0


def test_no_quota_and_no_cgroup_file_mean_no_limit(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    write(proc, "2:cpu:/\n0::/")
    write(root / "cpu" / "cpu.cfs_quota_us", "-1")
    write(root / "cpu" / "cpu.cfs_period_us", "100000")
    write(root / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(root, tmp_path / "missing") is None


def test_available_cores_is_the_fewest_any_limit_allows():
    assert available_cores({"affinity": 8, "cgroup": None, "slurm": None}) == 8
    assert available_cores({"affinity": 8, "cgroup": 2.5, "slurm": 4}) == 2
    assert available_cores({"affinity": 8, "cgroup": None, "slurm": 3}) == 3
    assert available_cores({"affinity": 2, "cgroup": 0.5, "slurm": None}) == 1
    assert slurm_cpus({"SLURM_CPUS_PER_TASK": "6"}) == 6
    assert slurm_cpus({"SLURM_CPUS_PER_TASK": ""}) is None and slurm_cpus({}) is None
    here = core_limits({})
    assert here["affinity"] == affinity_cores() >= 1 and here["slurm"] is None
    assert 1 <= available_cores(here) <= affinity_cores()


def test_the_users_wait_policy_and_thread_count_win():
    assert wait_policy_env({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        assert wait_policy_env({key: "1"}) == {}
    assert resolve_threads("auto", {}, cores=3, torch_default=8) == (3, "auto: available cores")
    assert resolve_threads("auto", {"OMP_NUM_THREADS": "5"}, cores=3, torch_default=5) == (5, "OMP_NUM_THREADS")
    assert resolve_threads(4, {"OMP_NUM_THREADS": "5"}, cores=3, torch_default=5) == (4, "train.threads")
    assert resolve_threads(None, {}, cores=3, torch_default=8) == (8, "torch default")
    assert wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}) == {"OMP_WAIT_POLICY": "ACTIVE", "set_by": "user"}
    assert wait_policy({"OMP_WAIT_POLICY": "PASSIVE", SET_BY_NSRUN: "OMP_WAIT_POLICY"})["set_by"] == "nsrun"
    assert wait_policy({"OMP_WAIT_POLICY": "ACTIVE", SET_BY_NSRUN: "OMP_WAIT_POLICY"})["set_by"] == "user"
    assert "default" in wait_policy({})["set_by"]


def test_prepare_environment_does_nothing_once_torch_is_imported():
    env: dict = {}
    assert "torch" in sys.modules and prepare_environment(env) == {} and env == {}


def test_the_entry_point_sets_the_wait_policy_before_torch_starts(tmp_path):
    """In a fresh process: importing the entry point leaves torch unimported, so main() sets OMP_WAIT_POLICY before
    libgomp reads it, unless the user set one."""
    code = ("import sys; import nsrun.commands.nsrun; assert 'torch' not in sys.modules; "
            "from nsrun.runner.threads import prepare_environment, wait_policy; "
            "set_here = prepare_environment(); import torch; import json; "
            "print(json.dumps([set_here, wait_policy(), 'torch' in sys.modules]))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", SET_BY_NSRUN)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    set_here, policy, _ = json.loads(out.stdout)
    assert set_here == {"OMP_WAIT_POLICY": "PASSIVE"} and policy == {"OMP_WAIT_POLICY": "PASSIVE", "set_by": "nsrun"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, timeout=120)
    set_here, policy, _ = json.loads(out.stdout)
    assert set_here == {} and policy == {"OMP_WAIT_POLICY": "ACTIVE", "set_by": "user"}


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_apply_thread_policy_sets_and_records_the_count(restore_threads):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    used = apply_thread_policy("auto", "cpu", env)
    assert used["threads"] == torch.get_num_threads() == used["cores_available"] == available_cores()
    assert used["threads_source"] == "auto: available cores" and "set_by" in used["wait_policy"]
    used = apply_thread_policy(1, "cpu", env)
    assert used["threads"] == torch.get_num_threads() == 1 and used["threads_source"] == "train.threads"
    assert apply_thread_policy(None, "cpu", env)["threads"] == 1  # null keeps what torch has
