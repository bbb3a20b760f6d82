"""Persistent compilation cache (jax_align/compile_cache.py): a second process reads what the first one wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Compiles one small jitted function and reports the persistent-cache hits and misses JAX recorded.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp
    from jax_align.compile_cache import enable_compilation_cache

    events = {"hits": 0, "misses": 0}
    def listener(name, **kwargs):
        if name == "/jax/compilation_cache/cache_hits":
            events["hits"] += 1
        if name == "/jax/compilation_cache/cache_misses":
            events["misses"] += 1
    jax.monitoring.register_event_listener(listener)

    arg = sys.argv[1]
    path = enable_compilation_cache(None if arg == "default" else arg, min_compile_time_secs=0)
    assert enable_compilation_cache(None if arg == "default" else arg, min_compile_time_secs=0) == path  # idempotent

    @jax.jit
    def f(x):
        for i in range(8):
            x = jnp.sin(x) @ x.T + i
        return x.sum()

    y = float(f(jnp.ones((16, 16), jnp.float32)))
    print(json.dumps({"path": path, "y": y, "enabled": bool(jax.config.jax_enable_compilation_cache), **events}))
    """
)


def _run(arg: str, env_cache: str | None, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ALIGN_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    env["JAX_PLATFORMS"] = "cpu"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # never the user's real cache
    if env_cache is not None:
        env["JAX_ALIGN_CACHE_DIR"] = env_cache
    out = subprocess.run([sys.executable, "-c", SCRIPT, arg], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(path) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_second_process_reads_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = _run("default", str(cache), tmp_path)  # directory from $JAX_ALIGN_CACHE_DIR
    assert first["path"] == str(cache) and first["enabled"]
    assert first["misses"] >= 1 and first["hits"] == 0
    written = _entries(cache)
    assert written, "the first process wrote no cache entry"
    second = _run("default", str(cache), tmp_path)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert second["y"] == first["y"]
    assert _entries(cache) == written  # nothing recompiled, nothing new written


def test_explicit_path_and_default_location(tmp_path):
    explicit = tmp_path / "explicit"
    res = _run(str(explicit), None, tmp_path)
    assert res["path"] == str(explicit) and _entries(explicit)
    res = _run("default", None, tmp_path)  # no variable: $XDG_CACHE_HOME/jax-align/xla
    assert res["path"] == str(tmp_path / "xdg" / "jax-align" / "xla")
    assert _entries(tmp_path / "xdg" / "jax-align" / "xla")


def test_cache_can_be_turned_off(tmp_path):
    for value in ("off", "0", "none"):
        res = _run("default", value, tmp_path)
        assert res["path"] is None and not res["enabled"]
        assert res["hits"] == 0
    res = _run("off", None, tmp_path)  # enable_compilation_cache("off")
    assert res["path"] is None and not res["enabled"]
    assert not _entries(tmp_path / "xdg" / "jax-align" / "xla")


def test_cli_enables_the_cache_before_the_command(tmp_path):
    """`jax-align COMMAND` turns the cache on (from $JAX_ALIGN_CACHE_DIR) before the command runs."""
    data = tmp_path / "sft.jsonl"
    data.write_text("")
    code = textwrap.dedent(
        f"""
        import jax
        from jax_align.cli.main import main
        main(["data", "validate", {str(data)!r}, "--format", "sft"])
        print(jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_ALIGN_CACHE_DIR=str(tmp_path / "c"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == f"{tmp_path / 'c'} True"
    env["JAX_ALIGN_CACHE_DIR"] = "off"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].endswith(" False")
