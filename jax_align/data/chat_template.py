"""Where a Hugging Face checkpoint keeps its chat template when the tokenizer does not carry one."""

from __future__ import annotations

import json
import os


def read_processor_template(model_dir: str) -> str | None:
    """LLaVA checkpoints on the Hub often keep the template with the processor, not the tokenizer:
    ``chat_template.jinja``, ``chat_template.json`` or ``processor_config.json`` (first found wins)."""
    for name in ("chat_template.jinja", "chat_template.json", "processor_config.json"):
        path = os.path.join(model_dir, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            if name.endswith(".jinja"):
                return f.read()
            value = json.load(f).get("chat_template")
            if value:
                return value
    return None
