"""The typed config tree: YAML plus `a.b=c` overrides, unknown keys rejected with a suggestion.

    cfg = load_config("configs/smoke.yaml", ["learner.lr=1e-4", "algorithm.beta=0.01"])

Every field has a default; a YAML file and the overrides only name what differs. Errors are one line
per problem and name the key, e.g. `learner.lr: Input should be a valid number (got 'fast')` or
`unknown key 'learner.learning_rate' (did you mean 'learner.lr'?)`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    rank: int = Field(16, ge=1)
    alpha: float = 32.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"  # PEFT's "all-linear": every linear projection but the head


class ModelConfig(_Section):
    name: str = "smollm2-135m-instruct"  # built-in offline name, local directory, or hub id
    init_adapter: str | None = None  # a PEFT adapter dir to start the policy from (e.g. the SFT result)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    # 4bit: QLoRA, the learner's frozen base in NF4 with double quantisation (bitsandbytes, CUDA or CPU),
    # LoRA and compute in bf16 where the hardware has it; rollout engines serve the unquantised base + adapter
    quantization: Literal["none", "4bit"] = "none"


class TaskColumns(_Section):
    """The dataset column behind each Task field when data.source is a `datasets` dataset (rlvr/core/tasks.py);
    a field whose column the dataset lacks stays unset, except the prompt."""

    id: str = "id"  # absent: <source name>-<split>-<row>
    prompt: str = "prompt"  # a string, or a list of chat messages
    answer: str = "answer"
    tools: str = "tools"  # JSON tool schemas (a list, or a JSON string of one)
    gold_calls: str = "gold_calls"
    expected_state: str = "expected_state"
    metadata: list[str] = Field(default_factory=list)  # columns copied into Task.metadata


class DataConfig(_Section):
    # where training tasks come from: "env" (the env's task source), a JSON-lines file of tasks, a
    # `datasets` dataset (a save_to_disk folder, Parquet/CSV files, JSON files with data.columns set, or
    # hf:ID[:CONFIG] where a hub is reachable), or "synthetic" (random scored trajectories, no rollouts: the
    # smoke run and the learner benchmarks)
    source: str = "env"
    columns: TaskColumns = Field(default_factory=TaskColumns)
    train_tasks: int = Field(1024, ge=1)  # how many tasks to draw from the env's task source
    tasks_per_step: int = Field(8, ge=1)
    # task-source options for RL's training tasks only, over env.options (source "env"): e.g. answer-only
    # tasks in a wording neither the demonstrations (synth.options) nor the held-out tasks use
    options: dict[str, Any] = Field(default_factory=dict)
    # the share of RL's training tasks that need no tool; None: env.conditions.no_tool_fraction
    no_tool_fraction: float | None = Field(None, ge=0.0, lt=1.0)
    # shape of synthetic trajectories (source=synthetic): used by the smoke run and the benchmarks
    synthetic_prompt_tokens: int = Field(256, ge=1)
    synthetic_completion_tokens: int = Field(64, ge=1)


class RolloutConfig(_Section):
    # hf: continuous batching on the model's own weights (llama, qwen2; rlvr/rollout/continuous.py), else
    # transformers' generate; hf-generate: always generate; vllm: rlvr/rollout/vllm_engine.py
    engine: Literal["hf", "hf-generate", "vllm"] = "hf"
    group_size: int = Field(8, ge=1)  # G: trajectories per task
    temperature: float = Field(1.0, ge=0.0)  # 0 = greedy; the learner divides its logits by the same value
    top_p: float = Field(1.0, gt=0.0, le=1.0)  # < 1 biases the learner's ratios (it sees the full softmax)
    max_new_tokens: int = Field(256, ge=1)  # per turn
    max_turns: int = Field(4, ge=1)
    max_total_tokens: int = Field(1024, ge=1)  # completion tokens of a trajectory, tool results included
    tool_timeout_s: float = Field(10.0, gt=0.0)  # per tool call
    tool_format: Literal["auto", "hermes", "llama3", "mistral"] = "auto"  # auto: read from the chat template
    strict_tokens: bool = False  # raise when the token stream drifts from a full re-render (else count it)
    # trajectory: each trajectory builds its env with its own seed; group: a task's whole group shares one, so
    # they meet the same env randomness (which calls fail transiently, ...) and the group baseline compares
    # the policy's choices, not the env's luck (unbiased, less variance, but more groups flat: see
    # docs/rollouts.md for what it did to the quickstart)
    env_randomness: Literal["trajectory", "group"] = "trajectory"
    # a frozen model each rollout worker serves on its own engine to simulated users and LLM judges whose
    # url is "local" (rlvr/core/endpoint.py LocalChat; tau2: env.options.user_url=local)
    local_chat_model: str | None = None


class ToolConditions(_Section):
    """Realistic tool conditions for training and evaluation rollouts (rlvr/envs/conditions.py); the
    demonstrations of `rlvr synth` are always made under clean conditions."""

    failure_rate: float = Field(0.0, ge=0.0, lt=1.0)  # share of tool calls that fail transiently (seeded)
    call_cost: float = Field(0.0, ge=0.0)  # subtracted from the reward per tool call
    no_tool_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # share of tasks that need no tool (env.no_tool_tasks)


class EnvConfig(_Section):
    name: str = "calculator"  # a built-in name, an entry point (group rlvr.envs) or "package.module:Class"
    options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the env's task source
    conditions: ToolConditions = Field(default_factory=ToolConditions)


class RewardSpec(_Section):
    name: str  # a built-in name, an entry point (group rlvr.rewards), "package.module:fn" or "file.py:fn"
    weight: float = 1.0  # 0 = a logged metric that does not enter the reward
    options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments bound to the function


class RewardsConfig(_Section):
    functions: list[RewardSpec] = Field(default_factory=list)  # empty: the env's own success test and metrics
    on_error: Literal["raise", "drop"] = "raise"  # a reward that raises stops the run, or drops the trajectory
    # sum: sum_r w_r * r; product: prod_r r ** w_r over the weighted rewards (all must hold; 0/1 ones are gates)
    combine: Literal["sum", "product"] = "sum"
    timeout_s: float = Field(60.0, gt=0.0)
    concurrency: int = Field(256, ge=1)  # reward calls in flight at once


# The names of the algorithm registries in rlvr/training/algorithms.py, declared here so that a config
# is checked without importing torch; algorithms.py refuses to import when a registry differs from these.
ADVANTAGE_NAMES = ("grpo", "dr_grpo", "rloo")
CREDIT_NAMES = ("none", "per_call", "step_grouped")
LOSS_NAMES = ("grpo", "gspo", "cispo")
AGGREGATION_NAMES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATOR_NAMES = ("k1", "k3")
PREFERENCE_LOSS_NAMES = ("sigmoid", "ipo")


class AlgorithmConfig(_Section):
    advantage: Literal[ADVANTAGE_NAMES] = "grpo"
    loss: Literal[LOSS_NAMES] = "grpo"
    aggregation: Literal[AGGREGATION_NAMES] = "token-mean"
    # PPO-style ratio bounds [1 - clip_low, 1 + clip_high]; clip_high > clip_low is DAPO's clip-higher.
    # cispo clips its (detached) IS weight to the same range: MiniMax-M1/ScaleRL use clip_low=1, clip_high=4.
    clip_low: float = Field(0.2, ge=0.0)
    clip_high: float = Field(0.28, ge=0.0)
    std_eps: float = Field(1e-6, gt=0.0)  # grpo: A = (r - mean) / (std + eps)
    # DAPO dynamic sampling: drop groups whose rewards are all equal, and roll out up to `refill_rounds`
    # extra batches of tasks to refill the step with groups that carry signal (verl's max_num_gen_batches)
    filter_zero_variance: bool = False
    # a control, not a method: rewards permuted across the batch's trajectories before advantages, so a gain
    # that survives it is drift, not learning (bench/quickstart.py's random-reward arm)
    shuffle_rewards: bool = False
    refill_rounds: int = Field(2, ge=0)
    # drop trajectories that hit a token limit (finish_reason max_tokens) from the loss and its token and
    # sequence counts; they still count in their group's baseline (TRL mask_truncated_completions)
    mask_truncated: bool = False
    # DAPO's soft overlong penalty on the reward, over a trajectory's sampled tokens n: 0 while
    # n <= overlong_max_tokens - overlong_buffer, then linear down to -1 at overlong_max_tokens, -1 beyond.
    # None = off. DAPO: max 20480 with a 4096 buffer; here e.g. rollout.max_total_tokens and a quarter of it
    overlong_max_tokens: int | None = Field(None, ge=1)
    overlong_buffer: int = Field(0, ge=0)
    beta: float = Field(0.0, ge=0.0)  # KL coefficient; 0 skips the reference pass entirely
    kl_estimator: Literal[KL_ESTIMATOR_NAMES] = "k3"
    # the KL reference: "start" = the starting policy (with model.init_adapter, a frozen copy of that
    # adapter, as TRL does; else the base model), "base" = the base model with the adapter disabled
    reference: Literal["start", "base"] = "start"
    # truncated IS against the engine's behaviour log-probs, w = min(pi_old / pi_behaviour, C):
    # None = auto (C = 2.0 when the data is off-policy: ray.max_staleness >= 1 or rollout.engine vllm;
    # off otherwise), 0 = off, C > 0 = on with that cap (see effective_tis_cap)
    tis_cap: float | None = Field(None, ge=0.0)
    # dual clip for negative advantages (grpo, gspo losses): l_t <= -dual_clip * A_t; None = off (verl 3.0)
    dual_clip: float | None = Field(3.0, gt=1.0)
    # per-call credit (docs/credit.md): none (outcome only, as in verl and TRL) | per_call (compared over
    # the group's calls) | step_grouped (over calls made from the same env state, GiGPO-style), each scaled
    # like the outcome advantage; A_token = A_outcome + w * A_call on the call's tokens
    credit: Literal[CREDIT_NAMES] = "none"
    credit_weight: float = Field(1.0, ge=0.0)
    # seq-mean-token-sum-norm divides each sequence's token sum by this constant (Dr.GRPO: max length)
    loss_norm_tokens: int | None = Field(None, ge=1)
    # PPO-ptx (InstructGPT): each optimiser step adds sft_coef x the mean NLL of sft.batch_size demonstrations
    # from sft.data (the SFT stage's conversations) to the policy loss, so RL keeps what the demonstrations
    # teach while it learns what they cannot; 0 = off
    sft_coef: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _norm_tokens(self) -> AlgorithmConfig:
        if self.aggregation == "seq-mean-token-sum-norm" and self.loss_norm_tokens is None:
            raise ValueError(
                "algorithm.loss_norm_tokens must be set for aggregation=seq-mean-token-sum-norm "
                "(Dr.GRPO uses the maximum completion length)"
            )
        if self.loss == "gspo" and self.aggregation != "seq-mean-token-mean":
            raise ValueError(f"algorithm.loss=gspo with aggregation={self.aggregation}: GSPO's objective is a mean "
                             "over sequences; set algorithm.aggregation=seq-mean-token-mean (as verl forces)")
        if self.loss == "gspo" and max(self.clip_low, self.clip_high) > GSPO_MAX_CLIP:
            raise ValueError(f"algorithm.loss=gspo with clip_low={self.clip_low}, clip_high={self.clip_high}: GSPO "
                             "clips a length-normalised sequence ratio that stays within ~1e-3 of 1, so a PPO-sized "
                             "range never clips; GSPO uses clip_low=3e-4, clip_high=4e-4")
        if self.overlong_max_tokens is not None and not 0 < self.overlong_buffer < self.overlong_max_tokens:
            raise ValueError("algorithm.overlong_buffer must be between 1 and overlong_max_tokens - 1 when "
                             "overlong_max_tokens is set (DAPO: a buffer of 4096 below a maximum of 20480)")
        return self


GSPO_MAX_CLIP = 0.01  # GSPO's paper range is 3e-4 / 4e-4; PPO's is 0.2


class LearnerConfig(_Section):
    lr: float = Field(2e-5, gt=0.0)  # LoRA wants ~10x the full fine-tuning rate
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = Field(1.0, gt=0.0)
    epochs: int = Field(1, ge=1)  # K inner passes over each batch
    mini_batches: int = Field(1, ge=1)  # optimiser steps per pass, each on 1/N of the groups (N > 1 or K > 1:
    # old log-probs are computed first, and the clipped ratio keeps the later steps near the sampling policy)
    # the old policy of the clipped ratio: "recompute" runs the learner over the mini-batches after the first
    # before the first update; "rollout" takes the engine's log-probs of the sampled tokens (no pass; the
    # engine-learner numerical gap then sits inside the ratio, and TIS has nothing left to correct)
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    micro_batch_tokens: int = Field(4096, ge=16)  # tokens packed into one micro-batch (no padding)
    shared_prefix: bool = True  # compute a group's shared prompt once where that pays (see docs/algorithms.md)
    # recompute each decoder layer's activations in backward (~1/3 more compute, activation memory of about one
    # layer: what QLoRA on a large model wants); runs the packed plain path, shared_prefix is not used
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where the hardware has it
    device: str = "auto"  # auto: cuda when present, else cpu


class EvalConfig(_Section):
    every: int = Field(0, ge=0)  # evaluate every N steps (and after the last); 0 = never
    tasks: int = Field(32, ge=1)  # held-out tasks from the env's "test" split, one greedy trajectory each


class LoggingConfig(_Section):
    wandb: Literal["auto", "offline", "online", "disabled"] = "auto"  # auto: online only with WANDB_API_KEY
    project: str = "rlvr"
    log_every: int = Field(1, ge=1)
    samples_every: int = Field(10, ge=0)  # write samples/step-N.md (one trajectory per group) every N steps; 0 = never


class CheckpointConfig(_Section):
    every: int = Field(0, ge=0)  # save every N steps (atomically, see rlvr/training/checkpoint.py); 0 = only the final adapter
    keep: int = Field(2, ge=1)  # newest checkpoints kept


class SynthConfig(_Section):
    """`rlvr synth`: where SFT conversations come from (rlvr/stages/synth.py)."""

    tasks: int = Field(256, ge=1)  # tasks drawn from the env's train split
    # task-source options for the demonstrations only, over env.options: e.g. gold for some task kinds
    # and not others, while RL trains on all (docs/environments.md, calculator)
    options: dict[str, Any] = Field(default_factory=dict)
    # None: the tasks' gold calls; a model name or directory: a local teacher sampled with an rlvr engine;
    # an http(s) URL: an OpenAI-compatible chat endpoint serving `teacher_model`
    teacher: str | None = None
    teacher_adapter: str | None = None  # a PEFT adapter on the local teacher
    teacher_model: str = ""
    samples: int = Field(4, ge=1)  # teacher trajectories per task (rejection sampling)
    temperature: float = Field(0.7, ge=0.0)  # the endpoint's; a local teacher samples at rollout.temperature
    api_key_env: str = "OPENAI_API_KEY"  # the endpoint's key is read from this environment variable
    concurrency: int = Field(8, ge=1)  # conversations with the endpoint at a time
    retries: int = Field(4, ge=0)  # per request, on 408/429/5xx and refused connections, backing off exponentially
    threshold: float = 1.0  # keep conversations whose reward reaches this
    # gold conversations beyond the happy path (docs/sft.md): the share in which one call first fails (a
    # transient error, or an argument name the env rejects) and the next turn retries or fixes it, and the
    # share of tasks that need no tool (the env's no_tool_tasks), answered directly
    recovery: float = Field(0.0, ge=0.0, le=1.0)
    restraint: float = Field(0.0, ge=0.0, lt=1.0)


class SFTConfig(_Section):
    """`rlvr sft`: LoRA supervised fine-tuning on the RL learner's path (rlvr/stages/sft.py)."""

    data: str = ""  # JSON lines from `rlvr synth`
    mix_data: str | None = None  # general chat conversations (JSON lines with "messages") against forgetting
    mix_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # their share of the training examples
    epochs: float = Field(2.0, gt=0.0)
    lr: float = Field(2e-4, gt=0.0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(1024, ge=16)  # longer conversations are cut at an assistant turn's end
    time_limit_s: float | None = Field(None, gt=0.0)  # stop after this much training time (a fair baseline)


class DPOConfig(_Section):
    """`rlvr dpo`: preference optimisation of a LoRA policy on multi-turn tool trajectories (rlvr/stages/dpo.py)."""

    # JSON lines {"chosen": messages, "rejected": messages, "tools": [...]} (OpenAI style, as synth writes);
    # empty: pairs from rollouts of the starting policy (model.init_adapter) on `tasks` env tasks
    pairs: str = ""
    tasks: int = Field(64, ge=1)  # tasks rolled out, rollout.group_size each, under env.conditions
    margin: float = Field(0.5, gt=0.0)  # a pair's reward gap, chosen - rejected, at least this
    # trajectory: the whole sampled trajectories (standard DPO); first_divergence: only the assistant turn of
    # each side where the two first differ, the call that decided the outcome (ToolPO-style per-call credit)
    credit: Literal["trajectory", "first_divergence"] = "trajectory"
    loss: Literal[PREFERENCE_LOSS_NAMES] = "sigmoid"  # sigmoid: DPO; ipo: IPO (TRL's loss_type names)
    beta: float = Field(0.1, gt=0.0)
    lr: float = Field(5e-5, gt=0.0)  # LoRA: ~10x a full fine-tune's (TRL's default 1e-6 barely moves an adapter)
    epochs: float = Field(1.0, gt=0.0)
    batch_size: int = Field(8, ge=1)  # pairs per optimiser step
    time_limit_s: float | None = Field(None, gt=0.0)


class RayConfig(_Section):
    enabled: bool = False  # false: everything runs in this process, so a debugger works
    address: str = ""  # "" starts a local Ray bound to 127.0.0.1; "auto" joins the submitting cluster
    rollout_workers: int = Field(1, ge=1)  # actors, each with its own engine, env and rewards
    worker_gpus: float = Field(0.0, ge=0.0)  # GPUs per rollout worker (fractions share one)
    learner_gpus: float = Field(0.0, ge=0.0)  # e.g. 0.5 + worker_gpus 0.5: one GPU; vLLM sleeps while the learner trains
    # policy versions a trajectory may lag behind the learner: 0 = on-policy (rollouts wait for the sync);
    # 1 = the next step's rollouts run while the learner trains on this one (off by one version)
    max_staleness: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _staleness_needs_ray(self) -> RayConfig:
        if self.max_staleness and not self.enabled:
            raise ValueError("ray.max_staleness > 0 overlaps rollouts with learner steps, which needs ray.enabled=true")
        return self


class Config(_Section):
    name: str = "run"
    seed: int = 0
    steps: int = Field(100, ge=1)
    output_dir: str = "runs"
    # "never" | "auto" (continue the newest run of this name under output_dir from its newest complete
    # checkpoint; a fresh run when there is none) | a checkpoint directory
    resume: str = "never"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def check_training(cfg: Config) -> None:
    """What `rlvr train` needs beyond a valid config, checked before any model loads: raises ConfigError."""
    if cfg.algorithm.sft_coef and not cfg.sft.data:
        raise ConfigError(f"algorithm.sft_coef={cfg.algorithm.sft_coef} needs demonstrations: set sft.data to the "
                          "JSON-lines conversations the SFT stage trained on (`rlvr synth` writes them)")
    if cfg.rollout.temperature == 0:
        raise ConfigError("rollout.temperature=0: training rollouts must sample (greedy rollouts have no "
                          "log-probs to learn from and the learner divides its logits by the temperature); use "
                          "rollout.temperature=1.0 (held-out evaluation is greedy on its own)")
    if cfg.learner.old_logprobs == "rollout":
        if cfg.rollout.top_p < 1:
            raise ConfigError(f"learner.old_logprobs=rollout with rollout.top_p={cfg.rollout.top_p}: the engine's "
                              "log-probs are of the top-p truncated distribution, the learner's of the full one; "
                              "use learner.old_logprobs=recompute")
        if cfg.algorithm.tis_cap:
            raise ConfigError("learner.old_logprobs=rollout makes the old policy the sampling one, so TIS weights "
                              "are all 1: leave algorithm.tis_cap unset, or use learner.old_logprobs=recompute")


AUTO_TIS_CAP = 2.0  # verl's rollout_is_threshold


def effective_tis_cap(cfg: Config) -> float | None:
    """The TIS cap the learner uses: `algorithm.tis_cap` when set (0 = off), else 2.0 when the rollouts are
    off-policy (they overlap learner steps, ray.max_staleness >= 1, or come from vLLM, whose kernels and
    precision differ from the learner's, or from the unquantised base while the learner's is 4-bit), else None
    (and None when learner.old_logprobs=rollout: the old policy is then the behaviour policy)."""
    cap = cfg.algorithm.tis_cap
    if cap is not None:
        return cap or None
    if cfg.learner.old_logprobs == "rollout":  # old = behaviour: every weight would be 1
        return None
    off_policy = cfg.ray.max_staleness >= 1 or cfg.rollout.engine == "vllm" or cfg.model.quantization != "none"
    return AUTO_TIS_CAP if off_policy else None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from an optional YAML file and `a.b=c` overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else raw)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(_describe(err) for err in e.errors())) from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    if err["type"] == "extra_forbidden":
        section = _section_at(loc[:-1])
        known = list(section.model_fields) if section else []
        close = _suggest(loc[-1], known)
        hint = f" (did you mean '{'.'.join(loc[:-1] + [close])}'?)" if close else f" (valid keys: {', '.join(known)})"
        return f"unknown key '{dotted}'{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" or not dotted:
        return f"{dotted}: {msg}" if dotted else msg
    return f"{dotted}: {msg} (got {err.get('input')!r})"


def _suggest(name: str, known: list[str]) -> str | None:
    """The valid key the user most likely meant: a near spelling, a prefix, or an abbreviation (lr)."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    initials = "".join(word[0] for word in name.split("_") if word)
    for key in known:
        if len(name) >= 3 and (key.startswith(name) or name.startswith(key)) or key == initials:
            return key
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    return close[0] if close else None


def _section_at(path: list[str]) -> type[BaseModel] | None:
    section: type[BaseModel] = Config
    for part in path:
        field = section.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        section = annotation
    return section
