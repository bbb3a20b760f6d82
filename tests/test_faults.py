"""Issue 16, fault injection: nothing lost, nothing silent.

Concurrent lock holders, conversions that fail halfway onto an existing output, corrupt and full checkpoints,
all-bad data with ``on_error=skip``, image bombs, escaping image paths, empty files and duplicate ids, and the
one-line error contract of the command line. Each case checks the exit code or exception, the message, and that
whatever was complete before is still loadable afterwards.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import jax.numpy as jnp
import numpy as np
import pytest
from data_fixtures import build_model_dir, pairwise_record, write_jsonl, write_png
from PIL import Image

from jax_align.atomic import atomic_dir, atomic_file
from jax_align.cli.main import main
from jax_align.run_lock import DirLock, LockedError, lock_output, lock_run_dir

EXE = os.path.join(os.path.dirname(sys.executable), "jax-align")


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ------------------------------------------------------------------------------------------------- locks
def test_second_lock_holder_fails_fast_naming_the_holder(tmp_path):
    run_dir = str(tmp_path / "run")
    with lock_run_dir(run_dir):
        with pytest.raises(LockedError) as err:
            DirLock(run_dir).acquire()
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and "host" in message and run_dir in message
    with lock_run_dir(run_dir):  # released on exit: the next holder gets it
        pass


def test_lock_of_a_killed_process_is_released(tmp_path):
    out = str(tmp_path / "out")
    code = textwrap.dedent(f"""
        import sys, time
        from jax_align.run_lock import lock_output
        lock = lock_output({out!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=f"pid {proc.pid} on host"):
            lock_output(out).acquire()
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        proc.wait(timeout=30)
    with lock_output(out):
        pass


# ------------------------------------------------------------------------------------------------ atomic
def test_atomic_file_and_dir_keep_the_old_output_on_failure(tmp_path):
    path = str(tmp_path / "scores.jsonl")
    with atomic_file(path) as f:
        f.write("old\n")
    with pytest.raises(OSError), atomic_file(path) as f:
        f.write("new, half")
        raise OSError(errno.ENOSPC, "No space left on device", path)
    assert open(path).read() == "old\n"
    out = str(tmp_path / "model")
    with atomic_dir(out) as work:
        open(os.path.join(work, "weights"), "w").write("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as work:
        open(os.path.join(work, "weights"), "w").write("new")
        raise RuntimeError("killed")
    assert open(os.path.join(out, "weights")).read() == "old"
    with atomic_dir(out) as work:
        open(os.path.join(work, "weights"), "w").write("new")
    assert open(os.path.join(out, "weights")).read() == "new"
    assert sorted(os.listdir(tmp_path)) == ["model", "scores.jsonl"]  # no temporaries left behind


# ------------------------------------------------------------------------------------------------ convert
@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from hf_fixtures import build_family

    root = tmp_path_factory.mktemp("faults_hf")
    src, _ = build_family(str(root), "qwen2_siglip_tied")
    return src


def _params(path):
    from flax import nnx

    from jax_align.model_store import load_model

    _, _, params = load_model(path)
    return [np.asarray(x) for x in __import__("jax").tree.leaves(nnx.to_pure_dict(params))]


def test_conversion_failing_halfway_keeps_the_old_output(hf_model, tmp_path, monkeypatch, capsys):
    import jax_align.model_store as store

    ckpt = str(tmp_path / "ckpt")
    assert main(["convert", "from-hf", hf_model, ckpt]) == 0
    before = _params(ckpt)

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(dst, "tokenizer.json"))

    monkeypatch.setattr(store, "copy_assets", full_disk)  # after the new params are written, before the marker
    assert main(["convert", "from-hf", hf_model, ckpt]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("jax-align convert: ") and "disk full" in line and "tokenizer.json" in line
    for a, b in zip(_params(ckpt), before, strict=True):  # the old model is intact and loadable
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == ["ckpt"]
    monkeypatch.undo()

    # to-hf onto an existing export: the safetensors writer fails -> the old export still loads
    hf_out = str(tmp_path / "hf")
    assert main(["convert", "to-hf", ckpt, hf_out]) == 0
    old = {f: open(os.path.join(hf_out, f), "rb").read() for f in sorted(os.listdir(hf_out))}
    import safetensors.flax

    def failing_save(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")

    monkeypatch.setattr(safetensors.flax, "save_file", failing_save)
    assert main(["convert", "to-hf", ckpt, hf_out]) == 2
    assert "disk full" in _one_line(capsys.readouterr().err)
    assert {f: open(os.path.join(hf_out, f), "rb").read() for f in sorted(os.listdir(hf_out))} == old


def test_conversion_onto_a_locked_output_exits_2(hf_model, tmp_path, capsys):
    out = str(tmp_path / "busy")
    with lock_output(out):
        assert main(["convert", "from-hf", hf_model, out]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"pid {os.getpid()} on host" in line and out in line
    assert not os.path.exists(out)


def test_conversion_refuses_to_replace_a_directory_that_is_not_a_model(hf_model, tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert main(["convert", "from-hf", hf_model, str(out)]) == 2
    assert "not a model" in _one_line(capsys.readouterr().err)
    assert (out / "notes.txt").read_text() == "precious"


def test_cli_errors_are_one_line_without_traceback(hf_model, tmp_path):
    bad = tmp_path / "bad_hf"
    shutil.copytree(hf_model, bad)
    for f in glob.glob(str(bad / "*.safetensors*")):
        os.remove(f)
    (bad / "model.safetensors").write_bytes(b"\xff" * 64)  # a corrupt safetensors header
    proc = subprocess.run([EXE, "convert", "from-hf", str(bad), str(tmp_path / "o")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("jax-align convert: ") and str(bad) in line
    assert not os.path.exists(tmp_path / "o")
    debug = subprocess.run([EXE, "--debug", "convert", "from-hf", str(bad), str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_errors_in_process(tmp_path, capsys):
    cases = [
        (["convert", "from-hf", str(tmp_path / "nowhere"), str(tmp_path / "o")], "nowhere: source: no such"),
        (["convert", "to-hf", str(tmp_path), str(tmp_path / "o"), "--max-shard-size", "lots"], "--max-shard-size"),
        (["prefs", "margins", "--reward-model", str(tmp_path), "--input", str(tmp_path / "p.jsonl"), "--output",
          str(tmp_path / "o.jsonl")], "p.jsonl: --input: no such file"),
    ]
    (tmp_path / "bad.jsonl").write_text('{"prompt": 1}\n{oops\n')
    cases.append((["prefs", "bdhs", "--model", str(tmp_path), "--input", str(tmp_path / "bad.jsonl"), "--output",
                   str(tmp_path / "o.jsonl")], "bad.jsonl:2: record: invalid JSON"))
    (tmp_path / "escape.jsonl").write_text('{"image": "../../etc/passwd", "prompt": "q", "chosen": "a", '
                                           '"rejected": "b"}\n')
    cases.append((["prefs", "margins", "--reward-model", str(tmp_path), "--input", str(tmp_path / "escape.jsonl"),
                   "--output", str(tmp_path / "o.jsonl")], "escape.jsonl:1: image: image path '../../etc/passwd' "
                                                           "escapes the data directory"))
    for argv, expected in cases:
        assert main(argv) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"jax-align {argv[0]}: ") and expected in line, (argv, line)


# ------------------------------------------------------------------------------------------- checkpoints
def _checkpointer(directory, **kw):
    from jax_align.train.checkpointing import TrainCheckpointer

    lines = []
    return TrainCheckpointer(directory, keep=5, use_async=kw.pop("use_async", True), report=lines.append,
                             **kw), lines


def _save_steps(directory, steps, size=8):
    ckpt, _ = _checkpointer(directory)
    for s in steps:
        ckpt.save(s, {"w": jnp.arange(size, dtype=jnp.float32) + s}, {"pos": s},
                  {"run": {"stage": "dpo"}, "data": {"world": {"seed": 0}}})
    ckpt.close()


def test_corrupt_newest_checkpoint_falls_back_and_is_kept(tmp_path):
    from jax_align.train.checkpointing import CheckpointError

    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1, 2, 3])
    for f in glob.glob(os.path.join(d, "3", "state", "**", "d", "*"), recursive=True):
        open(f, "r+b").truncate(3)  # truncated data files
    ckpt, lines = _checkpointer(d)
    step, state, data = ckpt.restore_latest({"w": jnp.zeros(8)})
    assert step == 2 and data == {"pos": 2}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(8) + 2)
    assert len(lines) == 1 and "step 3" in lines[0] and "unreadable" in lines[0] and "\n" not in lines[0]
    assert os.path.isdir(os.path.join(d, "3.corrupt"))  # kept for inspection, never deleted
    # the resumed run can save step 3 again
    ckpt.save(3, {"w": jnp.zeros(8)}, {"pos": 3}, {"run": {"stage": "dpo"}})
    ckpt.close()
    # every checkpoint unreadable: one error naming them, nothing deleted
    for s in (1, 2, 3):
        open(os.path.join(d, str(s), "state", "_METADATA"), "w").write("{garbage")
    ckpt, lines = _checkpointer(d)
    with pytest.raises(CheckpointError, match="no readable checkpoint") as err:
        ckpt.restore_latest({"w": jnp.zeros(8)})
    assert "\n" not in str(err.value) and len(lines) == 3
    assert sorted(os.listdir(d)) == ["1.corrupt", "2.corrupt", "3.corrupt", "3.corrupt2"]


def test_disk_full_while_saving_stops_in_one_line_keeping_complete_checkpoints(tmp_path, monkeypatch):
    from jax_align.train.checkpointing import CheckpointError

    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1, 2])
    ckpt, _ = _checkpointer(d)
    original = ckpt.manager.save

    def full(step, *a, **k):
        os.makedirs(os.path.join(d, f"{step}.orbax-checkpoint-tmp"), exist_ok=True)
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "{d}/3": '
                         "Failed to write: No space left on device [os_error_code='28']")

    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(CheckpointError) as err:
        ckpt.save(3, {"w": jnp.zeros(8)}, {"pos": 3}, {})
    message = str(err.value)
    assert "\n" not in message and "disk full" in message and "MiB free" in message and d in message
    assert "steps [1, 2]" in message
    monkeypatch.setattr(ckpt.manager, "save", original)
    ckpt.close()
    assert sorted(os.listdir(d)) == ["1", "2"]
    ckpt, _ = _checkpointer(d)
    assert ckpt.restore_latest({"w": jnp.zeros(8)})[0] == 2


def _tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_real_full_disk_during_async_save(tmp_path):
    from jax_align.train.checkpointing import CheckpointError

    mnt = str(tmp_path / "tmpfs")
    if not _tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here (not root); the injected ENOSPC test covers the logic")
    try:
        d = os.path.join(mnt, "checkpoints")
        ckpt, _ = _checkpointer(d)
        with pytest.raises(CheckpointError) as err:
            for s in range(1, 40):
                ckpt.save(s, {"w": jnp.arange(60000, dtype=jnp.float32) + s}, {"pos": s}, {})
            ckpt.close()
        assert "disk full" in str(err.value) and "\n" not in str(err.value)
        kept = sorted(int(n) for n in os.listdir(d) if n.isdigit())
        assert kept and not [n for n in os.listdir(d) if "tmp" in n]
        ckpt, _ = _checkpointer(d)
        step, state, _ = ckpt.restore_latest({"w": jnp.zeros(60000)})
        assert step == kept[-1] and float(state["w"][0]) == step
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=10)


def test_conversion_onto_a_full_tmpfs_keeps_the_old_output(hf_model, tmp_path, capsys):
    probe = str(tmp_path / "probe")
    assert main(["convert", "from-hf", hf_model, probe]) == 0
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(probe) for f in fs)
    mnt = str(tmp_path / "tmpfs")
    if not _tmpfs(mnt, f"{int(size * 1.6) // 1024}k"):  # room for one model, not for two
        pytest.skip("cannot mount a tmpfs here (not root); the injected ENOSPC test covers the logic")
    try:
        out = os.path.join(mnt, "model")
        assert main(["convert", "from-hf", hf_model, out]) == 0
        before = _params(out)
        capsys.readouterr()
        assert main(["convert", "from-hf", hf_model, out]) == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"jax-align convert: {out}: output: disk full") and "MiB free" in line
        assert os.listdir(mnt) == ["model"]
        for a, b in zip(_params(out), before, strict=True):
            np.testing.assert_array_equal(a, b)
        assert main(["convert", "to-hf", out, os.path.join(mnt, "hf")]) == 2
        assert "disk full" in _one_line(capsys.readouterr().err) and os.listdir(mnt) == ["model"]
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=10)


def test_restore_a_given_step_sets_newer_ones_aside(tmp_path):
    from jax_align.train.checkpointing import CheckpointError

    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1, 2, 3])
    ckpt, lines = _checkpointer(d)
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 7 \(complete checkpoints: \[1, 2, 3\]\)"):
        ckpt.restore_step(7, {"w": jnp.zeros(8)})
    state, data = ckpt.restore_step(2, {"w": jnp.zeros(8)})
    assert data == {"pos": 2} and float(state["w"][0]) == 2
    assert "3.superseded" in os.listdir(d) and ckpt.all_steps() == [2, 1] and len(lines) == 1


def test_last_good_step_skips_the_checkpoint_that_produced_the_nan(tmp_path):
    d = str(tmp_path / "checkpoints")
    _save_steps(d, [2, 4, 6])
    ckpt, _ = _checkpointer(d)
    assert ckpt.last_good_step(7) == 4  # step 7's loss came from checkpoint 6's parameters
    assert ckpt.last_good_step(8) == 6 and ckpt.last_good_step(3) is None


def test_config_fingerprint_names_the_changed_keys(tmp_path):
    from jax_align.train.checkpointing import check_fingerprint, fingerprint

    cfg = {"run": {"stage": "dpo", "dir": "a", "seed": 0}, "data": {"world": {"seed": 1, "n": 64}, "layout": "naive",
                                                                   "num_responses": 0, "max_length": 128},
           "optim": {"lr": 1e-3}, "model": {"init": "tiny-world", "path": ""}}
    new = json.loads(json.dumps(cfg))
    new["optim"]["lr"] = 5e-4  # a new learning rate is a legitimate resume
    new["run"]["dir"] = "b"
    assert check_fingerprint(fingerprint(cfg), fingerprint(new)) == []
    new["data"]["world"]["seed"] = 2
    new["run"]["stage"] = "sft"
    assert check_fingerprint(fingerprint(cfg), fingerprint(new)) == ["data.world.seed", "run.stage"]
    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1])
    ckpt, _ = _checkpointer(d)
    assert ckpt.read_fingerprint(1) == {"run.stage": "dpo", "data.world.seed": 0}


# ------------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_data")
    model = build_model_dir(str(root / "model"))
    write_png(str(root / "data" / "img" / "ok.png"))
    Image.new("1", (40000, 500)).save(root / "data" / "img" / "strip.png")  # a few KB, a 1.6 G-pixel canvas
    Image.new("1", (7000, 7000)).save(root / "data" / "img" / "big.png")
    write_png(str(root / "outside.png"))
    return root, model


def _next_with_timeout(it, seconds=60, batches=20):
    box = {}

    def run():
        try:
            for _ in range(batches):
                box["value"] = next(it)
        except BaseException as e:  # noqa: B036 - handed to the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the pipeline hangs"
    return box


def test_skip_mode_stops_when_every_record_is_bad(data_root):
    from jax_align.data.pipeline import DataConfig, DataPipeline, TooManyBadRecords

    root, model = data_root
    path = str(root / "data" / "moved.jsonl")
    write_jsonl(path, [pairwise_record(i, image=f"img/moved{i}.png") for i in range(6)])
    cfg = DataConfig(path=path, format="pairwise", model_dir=model, batch_size=2, buckets=(64,), num_epochs=None,
                     on_error="skip", max_skip_fraction=1.0, shuffle=False)
    box = _next_with_timeout(DataPipeline(cfg).iterator())
    err = box.get("error")
    assert isinstance(err, TooManyBadRecords), box
    assert str(err).startswith(f"{path}:1: image: missing image") and "all 6 records of epoch 0 are bad" in str(err)
    # half bad is over the default max_skip_fraction of 0.5 once more than 3 of 6 are bad
    recs = [pairwise_record(i, image="img/ok.png" if i < 2 else "img/gone.png") for i in range(6)]
    write_jsonl(path, recs)
    box = _next_with_timeout(DataPipeline(DataConfig(**{**cfg.__dict__, "max_skip_fraction": 0.5})).iterator())
    assert isinstance(box.get("error"), TooManyBadRecords) and "max_skip_fraction=0.5" in str(box["error"])


def test_image_bombs_are_refused_from_the_header(data_root, capsys):
    from jax_align.data.images import ImageLimits, ImageLoadError, load_image
    from jax_align.data.records import ImageRef

    root, _ = data_root
    strip = str(root / "data" / "img" / "strip.png")
    with pytest.raises(ImageLoadError, match="image too large: .*strip.png: 40000x500"):
        load_image(ImageRef("image", path=strip))
    big = str(root / "data" / "img" / "big.png")
    with pytest.raises(ImageLoadError, match="image too large"):
        load_image(ImageRef("image", path=big))
    load_image(ImageRef("image", path=big), ImageLimits(max_pixels=50_000_000))  # configurable
    with pytest.raises(ImageLoadError, match="aspect ratio 80.0"):
        load_image(ImageRef("image", path=strip), ImageLimits(max_pixels=0))
    path = str(root / "data" / "bombs.jsonl")
    write_jsonl(path, [pairwise_record(0, image="img/strip.png"), pairwise_record(1, image="img/ok.png")])
    assert main(["data", "validate", path, "--format", "pairwise"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{path}:1: image: image too large")


def test_image_paths_that_escape_the_data_directory_are_named(data_root, capsys):
    root, _ = data_root
    path = str(root / "data" / "escape.jsonl")
    write_jsonl(path, [pairwise_record(0, image="../outside.png"), pairwise_record(1, image="/etc/passwd"),
                       pairwise_record(2, image="img/../img/ok.png")])
    assert main(["data", "validate", path, "--format", "pairwise"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(": ", 2)[:2] for ln in out] == [[f"{path}:1", "image"], [f"{path}:2", "image"]]
    assert "escapes the data directory" in out[0] and "absolute" in out[1]
    assert main(["data", "validate", path, "--format", "pairwise", "--allow-absolute-paths"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{path}:2: image: unreadable image")  # /etc/passwd: not an image


def test_validate_reports_empty_files_and_duplicate_ids(data_root, capsys):
    root, _ = data_root
    empty = root / "data" / "empty.jsonl"
    empty.write_text("\n")
    assert main(["data", "validate", str(empty), "--format", "pairwise"]) == 1
    assert capsys.readouterr().out.strip() == f"{empty}:0: file: empty: no records"
    path = str(root / "data" / "dups.jsonl")
    recs = [{**pairwise_record(i, image="img/ok.png"), "id": f"r{i % 2}"} for i in range(3)]
    write_jsonl(path, recs)
    assert main(["data", "validate", path, "--format", "pairwise"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{path}:3: id: duplicate id 'r0' (first at record 1)"]


def test_validate_length_check_with_a_tokenizer_only(data_root, capsys):
    root, model = data_root
    path = str(root / "data" / "long.jsonl")
    recs = [pairwise_record(0, image="img/ok.png"), pairwise_record(1, image="img/ok.png")]
    recs[1]["prompt"] = "<image>\n" + "what color is the cat " * 40
    write_jsonl(path, recs)
    tok = str(root / "tok_only")
    shutil.copytree(model, tok, ignore=shutil.ignore_patterns("config.json", "*.safetensors"))
    argv = ["data", "validate", path, "--format", "pairwise", "--tokenizer", tok, "--max-length", "40"]
    assert main(argv) == 2  # no config.json: the image-token count must be given
    assert "--image-tokens" in _one_line(capsys.readouterr().err)
    assert main(argv + ["--image-tokens", "4"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{path}:2: prompt: too long even after truncation")


def test_resume_modes_and_config_change(tmp_path):
    from jax_align.train.checkpointing import CheckpointError, fingerprint, resume_state

    d = str(tmp_path / "checkpoints")
    _save_steps(d, [1, 2])
    ckpt, _ = _checkpointer(d)
    same = fingerprint({"run": {"stage": "dpo"}, "data": {"world": {"seed": 0}}})
    changed = fingerprint({"run": {"stage": "sft"}, "data": {"world": {"seed": 0}}})
    abstract = {"w": jnp.zeros(8)}
    assert resume_state(ckpt, abstract, "never", same) == (0, None, None)
    step, state, data = resume_state(ckpt, abstract, "auto", same)
    assert step == 2 and data == {"pos": 2}
    with pytest.raises(CheckpointError, match=r"run.stage: 'dpo' -> 'sft'.*checkpoint.resume=force"):
        resume_state(ckpt, abstract, "auto", changed)
    assert resume_state(ckpt, abstract, "force", changed)[0] == 2
    assert resume_state(ckpt, abstract, "1", same)[0] == 1
    with pytest.raises(CheckpointError, match="must be auto, never, force or a step number"):
        resume_state(ckpt, abstract, "latest", same)
    empty, _ = _checkpointer(str(tmp_path / "none"))
    assert resume_state(empty, abstract, "auto", same) == (0, None, None)


def test_train_with_all_bad_data_and_skip_stops_in_one_line(tmp_path):
    """Every image moved away: ``data.on_error=skip`` stops with a line naming the file, record and field."""
    from jax_align.world.datasets import write_world

    world = str(tmp_path / "world")
    write_world(world, seed=0, n=4)
    data = str(tmp_path / "world" / "moved.jsonl")
    write_jsonl(data, [{"image": f"gone/{i}.png", "prompt": "What is this?", "chosen": "a cat", "rejected": "a dog"}
                       for i in range(8)])
    cfg = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_dpo.yaml")
    proc = subprocess.run([EXE, "train", cfg, f"run.dir={tmp_path / 'run'}", f"data.train={data}",
                           f"model.tokenizer={world}/tokenizer", "data.on_error=skip", "train.steps=2",
                           "train.progress=false"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line(proc.stderr)
    assert line.startswith(f"jax-align train: {data}:1: image: missing image") and "on_error=skip stopped" in line


def test_kill_during_export_keeps_the_old_export(hf_model, tmp_path):
    """SIGKILL while the new safetensors file is half written: the old export is still complete and loads."""
    from transformers import LlavaForConditionalGeneration

    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    assert main(["convert", "from-hf", hf_model, ckpt]) == 0
    assert main(["convert", "to-hf", ckpt, out]) == 0
    old = {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))}
    code = textwrap.dedent(f"""
        import sys, time
        import safetensors.flax
        def half_written(tensors, path, metadata=None):
            open(path, "wb").write(b"partial")
            print("writing", flush=True)
            time.sleep(60)
        safetensors.flax.save_file = half_written
        from jax_align.cli.main import main
        sys.exit(main(["convert", "to-hf", {ckpt!r}, {out!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))} == old
    LlavaForConditionalGeneration.from_pretrained(out)
    assert main(["convert", "to-hf", ckpt, out]) == 0  # the next export cleans the killed one's temporary up
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "hf"]
