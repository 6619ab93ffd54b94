"""The HF engine samples exactly the distribution whose log-probs it records, whatever generation_config
the model ships (hub models set do_sample, top_k, top_p, temperature, repetition_penalty, ...)."""

import pytest
import torch
from transformers import GenerationConfig

from rlvr.rollout.engine import HFEngine, SamplingParams
from rlvr.training.models import load_model, load_tokenizer


def _full_softmax_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_shipped_generation_config_changes_nothing(temperature):
    tokenizer = load_tokenizer("tiny-random-llama")
    model = load_model("tiny-random-llama", dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 times 4?"}],
                                           add_generation_prompt=True, return_dict=False)
    params = [SamplingParams(max_tokens=12, temperature=temperature, seed=s) for s in (1, 2)]
    plain = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id}).generate_batch([prompt] * 2, params)

    model.generation_config = GenerationConfig(do_sample=True, top_k=3, top_p=0.3, temperature=0.2,
                                               repetition_penalty=3.0, no_repeat_ngram_size=1, min_new_tokens=12)
    shipped = HFEngine(model, tokenizer, stop_ids={tokenizer.eos_token_id}).generate_batch([prompt] * 2, params)
    assert [c.token_ids for c in shipped] == [c.token_ids for c in plain]
    for completion in shipped:
        # the recorded log-probs are those of the sampled tokens under softmax(logits / T): what the learner computes
        # (greedy records them at T = 1)
        expected = _full_softmax_logprobs(model, prompt, completion.token_ids, temperature or 1.0)
        assert completion.logprobs == pytest.approx(expected, abs=1e-4)
    assert model.generation_config.repetition_penalty == 3.0  # the model's own config is left as it was
