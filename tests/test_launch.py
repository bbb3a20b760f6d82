"""Launch scripts: tools/tpu_pod.sh, tools/launch_multinode.sh and tools/gpu_slurm.sbatch.

Dry runs print every command; the tests parse them (with shlex, so the quoting is checked too). The real paths
run against stub ``gcloud`` / ``jax-align`` executables that record their arguments: nothing leaves the machine.
The real two-process training on localhost is tests/test_train.py::test_two_processes_equal_one.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tools" / "tpu_pod.sh"
MULTI = ROOT / "tools" / "launch_multinode.sh"
SBATCH = ROOT / "tools" / "gpu_slurm.sbatch"
STUBBED = ("gcloud", "srun", "scontrol", "nvidia-smi", "jax-align", "sbatch")


@pytest.fixture
def stubs(tmp_path):
    """A bin directory whose gcloud/srun/jax-align/... only record their arguments (first on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for name in STUBBED:
        p = bin_dir / name
        p.write_text(
            "#!/usr/bin/env bash\n"
            f'printf "%s\\n" "{name} $*" >> {shlex.quote(str(calls))}\n'
            'if [[ "$*" == *" describe "* ]]; then\n'
            '  [[ -n "${STUB_TPU_EXISTS:-}" ]] && { echo "READY v5p-64 10.0.0.2;10.0.0.3"; exit 0; }\n'
            "  exit 1\n"
            "fi\n"
            'if [[ -n "${STUB_FAIL_ID:-}" && "${@: -1}" == "$STUB_FAIL_ID" ]]; then sleep 0.5; exit 7; fi\n'
            'if [[ -n "${STUB_SLEEP:-}" ]]; then sleep "$STUB_SLEEP"; fi\n'
            "exit 0\n"
        )
        p.chmod(0o755)
    return bin_dir, calls


def _env(stubs, **extra) -> dict:
    bin_dir, _ = stubs
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TPU_", "JAX_ALIGN_")) and k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _run(script, *args, env, cwd=None, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=60)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line, comments=True) for line in stdout.splitlines() if line and not line.startswith("#")]


def _flag(argv: list[str], name: str) -> str:
    i = argv.index(name)
    return argv[i + 1]


def _launches(stdout: str) -> list[dict]:
    """The processes of launch_multinode.sh dry-run output."""
    procs = []
    for argv in _commands(stdout):
        if "train" not in argv:
            continue
        assert argv[0] == "env" and argv[1].startswith("CUDA_VISIBLE_DEVICES=")
        procs.append({"gpu": argv[1].split("=", 1)[1], "argv": argv,
                      "coordinator": _flag(argv, "--coordinator"), "num": int(_flag(argv, "--num-processes")),
                      "id": int(_flag(argv, "--process-id")), "log": argv[argv.index(">") + 1]})
    return procs


def _no_calls(stubs):
    _, calls = stubs
    assert not calls.exists(), calls.read_text()


# ---------------------------------------------------------------- TPU pod


def test_tpu_pod_dry_run_prints_every_command(stubs):
    out = _run(TPU, "--dry-run", "--name", "pod1", "--zone", "us-east5-a", "--project", "proj",
               "configs/tiny_dpo.yaml", "train.steps=3", "run.dir=/mnt/shared/it's a run", env=_env(stubs),
               cwd=ROOT).stdout
    _no_calls(stubs)
    assert out.splitlines()[0] == "# TPU VM pod1 (v5p-64, 8 workers) in us-east5-a"
    cmds = _commands(out)
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    assert all(c[1:4] == ["compute", "tpus", "tpu-vm"] for c in gcloud)
    assert all("--zone=us-east5-a" in c and "--project=proj" in c for c in gcloud)
    verbs = [c[4] for c in gcloud]
    assert verbs == ["describe", "create", "ssh", "scp", "ssh", "scp", "ssh", "ssh"]
    create = gcloud[1]
    assert create[5] == "pod1" and "--accelerator-type=v5p-64" in create and "--version=v2-alpha-tpuv5" in create
    # the wheel is built here, copied to and installed on every worker
    build = next(c for c in cmds if c[:4] == ["python3", "-m", "pip", "wheel"])
    wheel = Path(build[build.index("-w") + 1]) / "jax_align-0.1.0-py3-none-any.whl"
    assert gcloud[3][5:7] == [str(wheel), "pod1:jax-align/"] and "--worker=all" in gcloud[3]
    remote = {i: shlex.split(next(a for a in c if a.startswith("--command="))[len("--command="):])
              for i, c in enumerate(gcloud) if c[4] == "ssh"}
    assert all("--worker=all" in gcloud[i] for i in (2, 4, 6)) and "--worker=0" in gcloud[7]
    assert remote[4][:5] == ["python3", "-m", "pip", "install", "--upgrade"]
    assert remote[4][5] == "jax-align/jax_align-0.1.0-py3-none-any.whl[tpu]"
    assert gcloud[5][5:7] == ["configs/tiny_dpo.yaml", "pod1:jax-align/"] and "--worker=all" in gcloud[5]
    train = remote[6]
    start = train.index("jax-align")
    assert train[start:start + 6] == ["jax-align", "train", "--distributed", "tiny_dpo.yaml", "train.steps=3",
                                      "run.dir=/mnt/shared/it's a run"]
    assert train[:2] == ["cd", "jax-align;"] and "train.log" in train and "train.pid" in train
    assert remote[7][0] == "tail" and remote[7][-1] == "jax-align/train.log"


@pytest.mark.parametrize("accel,workers,version", [
    ("v5p-8", 1, "v2-alpha-tpuv5"), ("v5p-128", 16, "v2-alpha-tpuv5"), ("v4-32", 4, "tpu-ubuntu2204-base"),
    ("v5litepod-16", 4, "v2-alpha-tpuv5-lite"), ("v5litepod-8", 1, "v2-alpha-tpuv5-lite"),
    ("v6e-64", 16, "v2-alpha-tpuv6e"),
])
def test_tpu_pod_worker_counts(stubs, accel, workers, version):
    out = _run(TPU, "--dry-run", "--accelerator-type", accel, "c.yaml", env=_env(stubs, TPU_ZONE="europe-west4-b"),
               cwd=ROOT).stdout
    assert out.splitlines()[0] == f"# TPU VM jax-align-pod ({accel}, {workers} workers) in europe-west4-b"
    create = next(c for c in _commands(out) if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"])
    assert f"--accelerator-type={accel}" in create and f"--version={version}" in create


def test_tpu_pod_wheel_pip_path_and_no_create(stubs):
    env = _env(stubs)
    out = _run(TPU, "--dry-run", "--wheel", "/w/jax_align-0.1.0-py3-none-any.whl", "--no-create", "--spot",
               "c.yaml", env=env, cwd=ROOT).stdout
    cmds = _commands(out)
    assert not any(c[:4] == ["python3", "-m", "pip", "wheel"] for c in cmds)
    assert not any("create" in c for c in cmds)
    assert ["/w/jax_align-0.1.0-py3-none-any.whl", "jax-align-pod:jax-align/"] in [c[5:7] for c in cmds]
    out = _run(TPU, "--dry-run", "--pip-path", "/mnt/src/jax-align", "c.yaml", env=env, cwd=ROOT).stdout
    cmds = _commands(out)
    assert not any(c[:4] == ["python3", "-m", "pip", "wheel"] for c in cmds)
    installs = [c for c in cmds if any("pip install" in a for a in c)]
    assert len(installs) == 1 and "--command=python3 -m pip install --upgrade '/mnt/src/jax-align[tpu]'" in installs[0]
    create = next(c for c in cmds if "create" in c)
    assert "--spot" not in create  # --spot was only given to the first run


def test_tpu_pod_runs_the_same_commands_and_reuses_a_slice(stubs, tmp_path):
    """Not a dry run, against a stub gcloud: an existing slice is reused, the rest runs as printed."""
    _, calls = stubs
    args = ["--name", "pod1", "--wheel", "/w/jax_align-0.1.0-py3-none-any.whl", "c.yaml", "train.steps=3"]
    dry = [shlex.join(c) for c in _commands(_run(TPU, "--dry-run", *args, env=_env(stubs), cwd=ROOT).stdout)]
    _run(TPU, *args, env=_env(stubs, STUB_TPU_EXISTS="1"), cwd=ROOT)
    ran = calls.read_text().splitlines()
    assert ran[0].startswith("gcloud compute tpus tpu-vm describe pod1")
    assert not any(" create " in line for line in ran)
    assert len(ran) == len(dry) - 1  # all but create
    calls.unlink()
    _run(TPU, *args, env=_env(stubs), cwd=ROOT)  # describe fails: create
    ran = calls.read_text().splitlines()
    assert ran[1].startswith("gcloud compute tpus tpu-vm create pod1") and len(ran) == len(dry)
    calls.unlink()
    out = _run(TPU, "--no-create", *args, env=_env(stubs), cwd=ROOT, check=False)
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert len(calls.read_text().splitlines()) == 1


# ---------------------------------------------------------------- multi-node GPU launcher


def test_launcher_explicit_flags(stubs):
    out = _run(MULTI, "--dry-run", "--coordinator", "gpu-a:1234", "--num-nodes", "2", "--node-rank", "1",
               "--gpus-per-node", "4", "configs/tiny_dpo.yaml", "train.steps=3", env=_env(stubs)).stdout
    _no_calls(stubs)
    procs = _launches(out)
    assert [p["id"] for p in procs] == [4, 5, 6, 7]
    assert [p["gpu"] for p in procs] == ["0", "1", "2", "3"]
    assert {p["coordinator"] for p in procs} == {"gpu-a:1234"} and {p["num"] for p in procs} == {8}
    for p in procs:
        i = p["argv"].index("jax-align")
        assert p["argv"][i:i + 4] == ["jax-align", "train", "configs/tiny_dpo.yaml", "train.steps=3"]
        assert p["log"] == f"launch_logs/process-{p['id']}.log"
    assert out.splitlines()[0] == "# node 1 of 2: 4 process(es), ids 4..7 of 8, coordinator gpu-a:1234"


@pytest.mark.parametrize("nodelist,first", [
    ("gpu[07-08]", "gpu07"), ("a01,a02,a03", "a01"), ("n-[3,5-6]-ib,m1", "n-3-ib"), ("solo", "solo"),
])
def test_launcher_reads_slurm(stubs, nodelist, first):
    env = _env(stubs, SLURM_JOB_NODELIST=nodelist, SLURM_JOB_NUM_NODES="3", SLURM_NODEID="2",
               SLURM_GPUS_ON_NODE="2", SLURM_JOB_ID="4242", CUDA_VISIBLE_DEVICES="4,5")
    procs = _launches(_run(MULTI, "--dry-run", "c.yaml", env=env).stdout)
    assert [p["id"] for p in procs] == [4, 5] and {p["num"] for p in procs} == {6}
    assert [p["gpu"] for p in procs] == ["4", "5"]  # the GPUs SLURM gave this task, in order
    assert {p["coordinator"] for p in procs} == {f"{first}:{12000 + 4242 % 20000}"}


def test_launcher_rejects_bad_input(stubs):
    env = _env(stubs)
    out = _run(MULTI, "--dry-run", "--num-nodes", "2", "c.yaml", env=env, check=False)
    assert out.returncode == 2 and "--coordinator is required" in out.stderr
    out = _run(MULTI, "--dry-run", "--num-nodes", "2", "--node-rank", "2", "--coordinator", "h", "c.yaml", env=env,
               check=False)
    assert out.returncode == 2 and "node rank" in out.stderr
    out = _run(MULTI, "--dry-run", env=env, check=False)
    assert out.returncode == 2 and "CONFIG" in out.stderr
    single = _launches(_run(MULTI, "--dry-run", "--gpus-per-node", "2", "c.yaml", env=env).stdout)
    assert {p["coordinator"] for p in single} == {"127.0.0.1:12355"}  # one node, no scheduler: localhost


def test_launcher_starts_every_process_and_propagates_failure(stubs, tmp_path):
    """Not a dry run: stub jax-align processes; the launcher waits for all of them, and a failing one stops
    the others and sets the exit status."""
    _, calls = stubs
    env = _env(stubs)
    dry = _launches(_run(MULTI, "--dry-run", "--gpus-per-node", "3", "--log-dir", str(tmp_path / "logs"),
                         "c.yaml", "a=1", env=env).stdout)
    out = _run(MULTI, "--gpus-per-node", "3", "--log-dir", str(tmp_path / "logs"), "c.yaml", "a=1", env=env)
    ran = sorted(calls.read_text().splitlines())
    assert ran == sorted(shlex.join(p["argv"][2:p["argv"].index(">")]) for p in dry)
    assert sorted(os.listdir(tmp_path / "logs")) == ["process-0.log", "process-1.log", "process-2.log"]
    assert out.returncode == 0
    calls.unlink()
    out = _run(MULTI, "--gpus-per-node", "2", "--log-dir", str(tmp_path / "logs2"), "c.yaml",
               env=_env(stubs, STUB_FAIL_ID="1", STUB_SLEEP="30"), check=False)
    assert out.returncode == 7 and "failed (status 7)" in out.stderr
    # process 0 (sleeping 30 s) was stopped, not waited for: the run returns well before 30 s (timeout=60)


# ---------------------------------------------------------------- SLURM batch script


def _slurm_procs(out: str) -> list[dict]:
    return _launches("\n".join(line for line in out.splitlines() if not line.startswith("srun ")))


def test_sbatch_dry_run_inside_a_job(stubs):
    env = _env(stubs, SLURM_JOB_NUM_NODES="3", SLURM_JOB_NODELIST="gpu[07-09]", SLURM_GPUS_PER_NODE="h100:4",
               SLURM_JOB_ID="777")
    out = _run(SBATCH, "--dry-run", "configs/tiny_dpo.yaml", "train.steps=3", env=env, cwd=ROOT).stdout
    _no_calls(stubs)
    srun = next(c for c in _commands(out) if c[0] == "srun")
    assert srun[1:4] == ["--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert srun[4:6] == ["bash", str(MULTI)]
    assert _flag(srun, "--num-nodes") == "3" and _flag(srun, "--gpus-per-node") == "4"
    assert srun[-2:] == ["configs/tiny_dpo.yaml", "train.steps=3"]
    procs = _slurm_procs(out)
    assert sorted(p["id"] for p in procs) == list(range(12))
    assert {p["num"] for p in procs} == {12} and {p["coordinator"] for p in procs} == {"gpu07:12777"}
    assert [p["gpu"] for p in procs] == ["0", "1", "2", "3"] * 3
    assert {p["log"] for p in procs} == {f"launch_logs/777/process-{i}.log" for i in range(12)}


def test_sbatch_dry_run_outside_a_job_and_real_run(stubs):
    out = _run(SBATCH, "--dry-run", "c.yaml", env=_env(stubs), cwd=ROOT).stdout
    procs = _slurm_procs(out)
    assert sorted(p["id"] for p in procs) == list(range(16))  # the #SBATCH header: 2 nodes x 8 GPUs
    assert {p["coordinator"] for p in procs} == {"node0:12000"}
    out = _run(SBATCH, "c.yaml", env=_env(stubs), cwd=ROOT, check=False)
    assert out.returncode == 2 and "not inside a SLURM job" in out.stderr
    _, calls = stubs
    env = _env(stubs, SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="g[1-2]", SLURM_JOB_ID="5", SLURM_GPUS_PER_NODE="8")
    _run(SBATCH, "c.yaml", "a=1", env=env, cwd=ROOT)  # execs srun (the stub)
    assert calls.read_text().splitlines() == [
        f"srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 bash {MULTI} --num-nodes 2 --gpus-per-node 8 "
        "--log-dir launch_logs/5 c.yaml a=1"]
