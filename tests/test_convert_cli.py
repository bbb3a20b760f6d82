"""Issue 2: ``jax-align convert from-hf`` / ``to-hf`` round trip through an Orbax checkpoint."""

from __future__ import annotations

import os

import numpy as np
from hf_fixtures import build_family, random_inputs, torch_logits

from jax_align.cli.main import main


def test_convert_round_trip(tmp_path):
    from transformers import LlavaForConditionalGeneration

    src, model = build_family(str(tmp_path), "qwen2_siglip_tied")
    (tmp_path / "qwen2_siglip_tied" / "tokenizer_config.json").write_text("{}")  # an asset that must travel
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "back")
    assert main(["convert", "from-hf", src, ckpt]) == 0
    assert os.path.isdir(os.path.join(ckpt, "params"))
    assert main(["convert", "to-hf", ckpt, out]) == 0
    assert os.path.isfile(os.path.join(out, "tokenizer_config.json"))
    reloaded, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    from jax_align.models import from_hf

    cfg, _, _ = from_hf(src)
    ids, px, mask = random_inputs(cfg)
    np.testing.assert_allclose(torch_logits(reloaded.eval(), ids, px, mask), torch_logits(model, ids, px, mask),
                               atol=1e-5)
