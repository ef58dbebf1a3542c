"""How the embedded llama.cpp server's threads are chosen and how they wait
(moac.providers.local_threads): the thread count follows the cores this process may use, the
server is started with it and without polling, and OpenMP's threads sleep at a barrier
instead of spinning, unless the user said otherwise. Speed itself is measured by
``python bench/local.py --busy``, not here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moac.providers import local, local_threads
from moac.providers.constants import LOCAL_CPU_POLL
from moac.providers.local import LocalServer, LocalServerFailed, LocalServers, runtime_installed
from moac.providers.local_threads import (
    cgroup_cpu_limit, default_threads, physical_cores, usable_cores,
)
from moac.ir.spec import ModelSpec, ProviderSpec

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("MOAC_REQUIRE_LOCAL", "") not in ("", "0")
needs_runtime = pytest.mark.skipif(not runtime_installed() and not REQUIRED,
                                   reason="llama.cpp is not installed: `pip install xllamacpp`")


# --- counting cores -----------------------------------------------------------------------

def test_smt_siblings_count_as_one_core():
    siblings = {0: "0,2", 2: "0,2", 1: "1,3", 3: "1,3"}
    assert physical_cores([0, 1, 2, 3], siblings.get) == 2
    assert physical_cores([0, 2], siblings.get) == 1  # both halves of one core
    assert physical_cores([0, 1], siblings.get) == 2
    # A CPU the kernel says nothing about is a core of its own; never fewer than one.
    assert physical_cores([0, 7], siblings.get) == 2
    assert physical_cores([], siblings.get) == 1


def test_a_containers_cpu_quota_is_read_from_either_cgroup_version():
    assert cgroup_cpu_limit(cpu_max="200000 100000\n") == 2.0
    assert cgroup_cpu_limit(cpu_max="150000 100000") == 1.5
    assert cgroup_cpu_limit(cpu_max="max 100000") is None
    assert cgroup_cpu_limit(quota_us="50000\n", period_us="100000\n") == 0.5
    assert cgroup_cpu_limit(quota_us="-1", period_us="100000") is None
    for garbage in ("", "lots", "100000 0"):
        assert cgroup_cpu_limit(cpu_max=garbage) is None


def test_usable_cores_are_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(local_threads, "physical_cores", lambda cpus: len(set(cpus)))
    monkeypatch.setattr(local_threads, "cgroup_cpu_limit", lambda: None)
    assert usable_cores() == 4
    monkeypatch.setattr(local_threads, "cgroup_cpu_limit", lambda: 1.5)
    assert usable_cores() == 2  # a quota of 1.5 CPUs: two threads, rounded up
    monkeypatch.setattr(local_threads, "cgroup_cpu_limit", lambda: 0.25)
    assert usable_cores() == 1


def test_the_default_is_the_usable_cores_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(local_threads, "usable_cores", lambda: 3)
    assert default_threads({}) == 3
    assert default_threads({"MOAC_LOCAL_THREADS": "1"}) == 1
    with pytest.raises(ValueError, match="MOAC_LOCAL_THREADS"):
        default_threads({"MOAC_LOCAL_THREADS": "none"})
    # On this machine: never more threads than cores it may run on.
    monkeypatch.undo()
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


# --- the parameters the server starts with ---------------------------------------------------

class _Refused(RuntimeError):
    pass


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """xllamacpp's Server replaced by one that records its parameters and then fails to
    start; returns (the recorded parameters, a stand-in GGUF file)."""
    xllamacpp = local._import_xllamacpp()
    params_seen: list = []

    def server(params):
        params_seen.append(params)
        raise _Refused("recorded")

    monkeypatch.setattr(xllamacpp, "Server", server)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    return params_seen, gguf


def threads_of(params) -> tuple[int, int]:
    return params.cpuparams.n_threads, params.cpuparams_batch.n_threads


@needs_runtime
def test_the_server_starts_with_one_thread_per_usable_core_and_no_polling(recorded):
    params_seen, gguf = recorded
    with pytest.raises(LocalServerFailed):
        LocalServer(gguf).start()
    (params,) = params_seen
    assert threads_of(params) == (usable_cores(), usable_cores())
    for cpu in (params.cpuparams, params.cpuparams_batch):
        assert cpu.poll == LOCAL_CPU_POLL == 0
        assert not cpu.strict_cpu  # threads may move to whichever core is free


@needs_runtime
def test_the_users_thread_count_reaches_the_server(recorded, monkeypatch):
    params_seen, gguf = recorded
    with pytest.raises(LocalServerFailed):
        LocalServer(gguf, threads=1).start()
    assert threads_of(params_seen.pop()) == (1, 1)

    # $MOAC_LOCAL_THREADS, through the servers of a run.
    monkeypatch.setenv("MOAC_LOCAL_THREADS", "3")
    provider = ProviderSpec(name="local", kind="local", parallel=1, timeout_s=30,
                            connect_timeout_s=5, read_timeout_s=30, max_retries=0)
    model = ModelSpec(name="m", provider="local", model_id=str(gguf), usd_per_m_input=0,
                      usd_per_m_output=0, active_params_b=0.135, total_params_b=0.135,
                      context_tokens=512, ttft_s=0.01, output_tokens_per_s=100,
                      prefill_tokens_per_s=250, answer_tokens=96)

    async def start():
        async with LocalServers() as servers:
            await servers.server(provider, model)

    with pytest.raises(LocalServerFailed):
        asyncio.run(start())
    assert threads_of(params_seen.pop()) == (3, 3)
    with pytest.raises(ValueError, match="threads"):
        LocalServer(gguf, threads=0)


# --- how OpenMP's threads wait ------------------------------------------------------------------

SHOW_WAIT = textwrap.dedent("""
    import ctypes, os, sys
    from moac.providers import local
    local._import_xllamacpp()
    gomp = ctypes.CDLL("libgomp.so.1")
    if not hasattr(gomp, "omp_display_env"):
        print("no omp_display_env"); sys.exit(0)
    sys.stderr.flush()
    gomp.omp_display_env(1)  # libgomp's settings, GOMP_* too, on stderr
    print("left in the environment:", os.environ.get("OMP_WAIT_POLICY"))
""")


def show_wait(**env: str) -> tuple[str, str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(env, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", SHOW_WAIT], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if "no omp_display_env" in done.stdout:
        pytest.skip("this libgomp cannot show its settings (omp_display_env)")
    return done.stdout, done.stderr


@needs_runtime
def test_openmp_threads_sleep_at_once_and_the_environment_is_put_back():
    stdout, settings = show_wait()
    # libgomp's default is 300000 spins (about 3 ms) before a waiting thread sleeps.
    assert "GOMP_SPINCOUNT = '0'" in settings
    assert "left in the environment: None" in stdout  # programs moac starts do not inherit it


@needs_runtime
def test_a_wait_policy_the_user_chose_is_kept():
    _, settings = show_wait(OMP_WAIT_POLICY="active")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in settings
    assert "GOMP_SPINCOUNT = '0'" not in settings
    _, settings = show_wait(GOMP_SPINCOUNT="300000")
    assert "GOMP_SPINCOUNT = '300000'" in settings
