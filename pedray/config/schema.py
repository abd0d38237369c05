"""Typed configuration of a pedray recipe: one dataclass per concern, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pedray.config.checks import check as _check
from pedray.config.serve import ServeConfig
from pedray.vocab import STAGES, TASKS


@dataclass
class DataConfig:
    corpus_dir: str | None = None
    """Folder of prepared records (from `pedray prep` or the embedded generator); None builds the embedded corpus."""
    inputs: list[str] = field(default_factory=list)
    """Extra files or folders of other people's corpora, normalised by `pedray prep` and mixed in."""
    seed: int = 0
    """Seed of the corpus generator, the splits and every shuffle."""
    instructions: int = 6000
    """How many instructions the embedded generator writes (all tasks together)."""
    holdout: float = 0.05
    """Fraction of each task held out for evaluation."""
    seq_len: int = 512
    """Length of one packed training row in tokens."""
    pack: bool = True
    """Pack several documents into one row (attention never crosses a document boundary)."""
    hybrid_ratio: float = 0.5
    """Hybrid instruction pre-training: flattened instructions per pretraining document in the cpt stream."""
    batch_size: int = 256
    """Records per Ray Data batch while tokenising and packing."""
    max_prompt_len: int = 384
    """Preference pairs: the prompt is cut from the left to this many tokens."""
    shuffle: Literal["global", "stream"] = "global"
    """global: Ray Data's all-to-all random_shuffle (best mixing; the exchange holds the dataset in the
    object store, spilling to disk). stream: nothing is held whole: files are read in a seeded order and
    records are shuffled within each batch, so mixing is as fine as the corpus is sharded into files."""
    replay_mb: int = 256
    """A one-worker stage keeps its first epoch of micro-batches when they fit in this many MB and replays
    them for every later epoch, instead of reading, shuffling and tokenising the corpus again (the seeded
    pipeline gives the same rows in the same order every epoch). A larger epoch streams every time; 0
    never keeps one. Changes no result, so it is not part of a stage's fingerprint."""

    def __post_init__(self) -> None:
        _check(self.replay_mb >= 0, "replay_mb must be >= 0")
        _check(16 <= self.seq_len <= 131072, "seq_len must be between 16 and 131072")
        _check(0.0 <= self.holdout < 0.5, "holdout must be in [0, 0.5)")
        _check(0.0 <= self.hybrid_ratio <= 10.0, "hybrid_ratio must be in [0, 10]")
        _check(self.instructions >= 10, "instructions must be at least 10")
        _check(self.batch_size >= 1, "batch_size must be positive")
        _check(0 < self.max_prompt_len < self.seq_len, "max_prompt_len must be in (0, seq_len)")


@dataclass
class ModelConfig:
    path: str | None = None
    """Local Hugging Face model folder; None builds the embedded default of `size`."""
    size: Literal["tiny", "mini", "small"] = "tiny"
    """Size of the embedded default model when `path` is None."""
    trust_remote_code: bool = False
    """Allow the model folder's own Python code (Baichuan2 needs it); off unless asked for."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel; sdpa and flash_attention_2 honour packed rows without cross-document attention."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (costs ~30% speed)."""


@dataclass
class LoraConfig:
    rank: int = 8
    """Rank r of every LoRA expert."""
    alpha: float = 16.0
    """LoRA scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the expert input."""
    target_modules: list[str] = field(default_factory=list)
    """Linear layer names to adapt; empty finds them automatically."""
    num_experts: int = 3
    """Number of specific experts T (the universal expert is always added)."""
    top_k: int = 0
    """Sparse gating: keep the top k specific experts per token; 0 keeps all (dense, the paper's)."""
    balance_coef: float = 0.0
    """Coefficient of the load-balancing auxiliary loss."""
    gating: Literal["token", "task"] = "token"
    """token: router on the hidden state (paper); task: gate from the record's task label (mergeable)."""
    noise: bool = True
    """Add eps * softplus(x Wn) to the router logits while training."""

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "rank must be at least 1")
        _check(self.num_experts >= 1, "num_experts must be at least 1")
        _check(0 <= self.top_k <= self.num_experts, "top_k must be in [0, num_experts]")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(self.balance_coef >= 0.0, "balance_coef must be non-negative")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate (a stage may override it)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent warming up linearly."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    grad_clip: float = 1.0
    """Gradient norm clipping; 0 disables it."""
    fused: bool = True
    """PyTorch's fused AdamW kernel (one pass over each parameter, on CPU and GPU) instead of its loop
    of elementwise ops per tensor: the small model's AdamW step 15 ms instead of 52 ms on 2 CPU cores,
    DeepSpeed's whole bf16 optimizer step 66-71 ms instead of 95. Same update up to rounding; what
    transformers' Trainer (LLaMA-Factory's) uses by default since torch 2.8."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr must be positive")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)")
        _check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")
        _check(self.grad_clip >= 0, "grad_clip must be non-negative")


@dataclass
class ScalingConfig:
    num_workers: int = 2
    """Ray Train workers; 0 runs the loop in the driver process (local debugging mode)."""
    cpus_per_worker: float = 0.5
    """CPUs each worker asks Ray for; leave one whole CPU free for Ray Data."""
    use_gpu: bool = False
    """One GPU per worker."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3."""
    offload_optimizer: bool = False
    """ZeRO-2/3: keep optimizer state on the CPU."""
    offload_params: bool = False
    """ZeRO-3: keep parameters on the CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training precision; auto picks bf16 only where it is fast (a bf16 GPU, a CPU with AMX or AVX512-BF16)."""
    micro_batch_size: int = 4
    """Rows per worker per forward pass."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    threads_per_worker: int = 0
    """torch threads inside a worker; 0 derives it from cpus_per_worker (Ray sets OMP_NUM_THREADS=1)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker asks for besides CPU and GPU (a node type's resource, e.g.
    `{"accelerator_type:A100": 0.01}`), so that the autoscaler adds nodes of that type."""
    compile: Literal["auto", "always", "never"] = "auto"
    """torch.compile each decoder layer of the trained model (`pedray.train.compiled`): norms, rotary
    embeddings and activations fused into a few kernels. auto: for bf16 training on a CPU with a C++
    compiler and ZeRO below 3 (measured there: +24% tokens/s; untested on GPUs); always; never."""
    share_worker: bool = True
    """One worker on a private local Ray: a chain's consecutive stages run in one Train run and one worker
    process (`pedray.train.group`); false gives each stage a run of its own, as on a cluster. Speed only."""

    def __post_init__(self) -> None:
        _check(self.num_workers >= 0, "num_workers must be non-negative")
        _check(self.cpus_per_worker > 0, "cpus_per_worker must be positive")
        _check(self.zero_stage in (0, 1, 2, 3), "zero_stage must be 0, 1, 2 or 3")
        _check(not self.offload_params or self.zero_stage == 3, "offload_params needs zero_stage 3")
        _check(not self.offload_optimizer or self.zero_stage >= 1, "offload_optimizer needs zero_stage >= 1")
        _check(self.micro_batch_size >= 1 and self.grad_accum >= 1, "micro_batch_size and grad_accum must be >= 1")
        _check(all(v > 0 for v in self.resources.values()), "scaling.resources amounts must be positive")
        _check(self.compile != "always" or self.zero_stage < 3,
               "compile=always needs zero_stage below 3 (ZeRO-3 gathers weights in hooks inside the layers)")
        _check(not {"CPU", "GPU"} & set(self.resources), "scaling.resources: set CPU and GPU with "
               "cpus_per_worker and use_gpu")


@dataclass
class StageConfig:
    enabled: bool = True
    """Run this stage in train_all."""
    max_steps: int = 100
    """Optimizer steps of the stage."""
    lr: float | None = None
    """Stage learning rate; None uses optim.lr."""
    checkpoint_every: int = 50
    """Report a Ray Train checkpoint every N steps (and at the end)."""
    log_every: int = 5
    """Print a progress line every N steps (each window's metrics go into the stage's history)."""
    report_every_s: float = 5.0
    """Send the progress metrics to Ray Train at most this often, when a Ray Train callback reads them (a
    Tune trial's, or one given to `run_stage`; checkpoints always go). Ray Train's controller takes one
    report per poll and `ray.train.report` blocks until it has: a report at every fast step would hold
    training up (measured: 1.7 s per report on the tiny model)."""
    beta: float = 0.1
    """dfpo: DPO temperature beta."""
    mu: float = 1.0
    """dfpo: weight of the length-normalised NLL of the chosen answer (0 gives plain DPO)."""
    unlikelihood: float = 0.0
    """Weight of the token-level unlikelihood term (`pedray.losses.unlikelihood_loss`), which pushes down
    tokens the answer already produced: over the answers (cpt, sft, mouse) or the chosen answers (dfpo,
    beside its following term); 0 trains without it."""
    max_failures: int = 2
    """Ray Train FailureConfig: worker failures tolerated before the stage fails."""
    eval_rows: int = 64
    """Held-out rows (test split) whose loss is measured before training, at checkpoints and at the end; 0 disables."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "max_steps must be at least 1")
        _check(self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be >= 1")
        _check(self.lr is None or self.lr > 0, "lr must be positive")
        _check(self.beta > 0 and self.mu >= 0, "beta must be positive and mu non-negative")
        _check(self.max_failures >= 0, "max_failures must be non-negative")
        _check(self.eval_rows >= 0, "eval_rows must be non-negative")
        _check(self.report_every_s >= 0, "report_every_s must be non-negative")
        _check(self.unlikelihood >= 0, "unlikelihood must be non-negative")


# Stage settings only some stages use: setting one on another stage is a mistake (`stages.cpt.mu=5`
# would be ignored in silence), so the loader rejects it.
STAGE_ONLY_KEYS: dict[str, tuple[str, ...]] = {"beta": ("dfpo",), "mu": ("dfpo",)}


def _default_stages() -> dict[str, StageConfig]:
    return {name: StageConfig() for name in STAGES}


@dataclass
class TuneConfig:
    stage: Literal["cpt", "sft", "dfpo", "mouse"] = "mouse"
    """The stage each trial trains (from the model the chain gives that stage)."""
    space: dict[str, list[Any]] = field(default_factory=lambda: {"lora.num_experts": [1, 2, 3, 4]})
    """Grid: dotted recipe keys (the override names, e.g. lora.rank, stages.dfpo.mu) -> values; every
    combination is one trial."""
    eval_every: int = 5
    """Steps between held-out evaluations (ASHA's time unit) in a trial."""
    grace_period: int = 1
    """ASHA: held-out evaluations a trial always gets before it may be stopped."""
    reduction_factor: int = 2
    """ASHA: keep the best 1/reduction_factor of trials at each rung."""
    max_concurrent: int = 0
    """Trials at once; 0 derives it from the cluster's CPUs (one CPU stays free for Ray Data)."""

    def __post_init__(self) -> None:
        _check(bool(self.space), "space must name at least one key")
        for key, values in self.space.items():
            _check(isinstance(values, list) and len(values) > 0, f"space.{key} must be a non-empty list")
        _check(self.eval_every >= 1 and self.grace_period >= 1, "eval_every and grace_period must be >= 1")
        _check(self.reduction_factor >= 2, "reduction_factor must be >= 2")
        _check(self.max_concurrent >= 0, "max_concurrent must be >= 0")


@dataclass
class EvalConfig:
    sets: list[str] = field(default_factory=list)
    """Extra PediaBench-layout files to evaluate on, beside the held-out splits."""
    max_new_tokens: int = 128
    """Generation length per answer."""
    limit: int = 50
    """Questions per task and set (0 = all)."""
    heldout: bool = True
    """Evaluate on the held-out split of the training corpus, per task."""
    after_stages: bool = True
    """train_all evaluates every stage's model (and the base model first, `base`), and ends with a
    comparison table."""
    base: bool = True
    """With after_stages: the base model too, as the table's first row (the demo leaves out its randomly
    initialised model, whose row says nothing)."""
    batch_size: int = 32
    """Questions per batched, KV-cached generate call."""
    actors: int = 0
    """Model replicas in the Ray Data actor pool (0: one per free CPU)."""
    where: str = "auto"
    """Where answers are generated: `actors` (a Ray Data actor pool, any cluster), `driver` (this process,
    every CPU's threads) or `auto`: the driver on a private local Ray that pedray started, unless
    `actors` is set; else the pool."""
    rouge: str = "paper"
    """ROUGE implementation: `paper` (the `rouge` package, as the paper's code; comparable with its table)
    or `rouge-chinese` (splits sentences at 。！？; ROUGE-L differs by several points)."""

    def __post_init__(self) -> None:
        _check(1 <= self.max_new_tokens <= 8192, "eval.max_new_tokens must be in [1, 8192]")
        _check(self.limit >= 0, "eval.limit must be >= 0 (0 = all)")
        _check(self.batch_size >= 1, "eval.batch_size must be positive")
        _check(self.actors >= 0, "eval.actors must be >= 0 (0 = one per free CPU)")
        _check(self.where in ("auto", "driver", "actors"), "eval.where must be 'auto', 'driver' or 'actors'")
        _check(self.rouge in ("paper", "rouge-chinese"), "eval.rouge must be 'paper' or 'rouge-chinese'")


@dataclass
class Recipe:
    name: str = "default"
    """Name of the run; stage folders and Ray run names derive from it."""
    output_dir: str = "outputs/default"
    """Where stage folders, manifests, models, reports and plots go: a local folder, or a URI every node
    reaches (s3://bucket/prefix, gs://...), in which case the corpus is read from there too."""
    storage: str | None = None
    """Where Ray Train keeps checkpoints: a URI every node reaches (s3://bucket/prefix, gs://...; an
    S3-compatible server by query, `?endpoint_override=host:9000&scheme=http`). None: <output_dir>/ray."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    stages: dict[str, StageConfig] = field(default_factory=_default_stages)
    tune: TuneConfig = field(default_factory=TuneConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(STAGES))
        _check(not unknown, f"unknown stage(s) {unknown}; allowed: {list(STAGES)}")
        for name in STAGES:
            self.stages.setdefault(name, StageConfig())

    def stage(self, name: str) -> StageConfig:
        return self.stages[name]


__all__ = [
    "DataConfig", "ModelConfig", "LoraConfig", "OptimConfig", "ScalingConfig", "StageConfig",
    "TuneConfig", "ServeConfig", "EvalConfig", "Recipe", "TASKS",
]
