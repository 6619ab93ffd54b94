"""`rlvr export`: an adapter as it is, or merged into its base model for serving without PEFT.

The merge runs in float32 (the LoRA product added to float32 base weights, no bf16 rounding of the
update), then the merged model is saved in the base checkpoint's own dtype with the tokenizer, so
`AutoModelForCausalLM.from_pretrained(out)` and vLLM's `LLM(out)` load it like the base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export(adapter: str | Path, out: str | Path, merge: bool = False) -> Path:
    adapter, out = Path(adapter), Path(out)
    if not all((adapter / f).is_file() for f in ADAPTER_FILES):
        raise FileNotFoundError(f"{adapter} is not a PEFT adapter directory (needs {' and '.join(ADAPTER_FILES)})")
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}/adapter_config.json does not name its base model")
    out.mkdir(parents=True, exist_ok=True)
    if not merge:
        for f in ADAPTER_FILES:
            shutil.copy2(adapter / f, out / f)
        return out
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = AutoConfig.from_pretrained(base).dtype or torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.to(dtype).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out
