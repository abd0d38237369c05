"""Every DeepSpeed call of pedray: configuration, initialise, backward, step, save, load, export."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from pedray.config.schema import OptimConfig, ScalingConfig, StageConfig
from pedray.model.selective import selective_forward
from pedray.net import free_port

TAG = "pedray"  # DeepSpeed also writes a file named "latest" beside the tag folder


def fast_bf16(use_gpu: bool) -> bool:
    """Whether bf16 matmuls are fast here: a bf16-capable GPU, or a CPU with AMX or AVX512-BF16.

    Without those instructions PyTorch emulates bf16 on the CPU, about 100 times slower than fp32
    (measured on an AVX2-only machine: 1 GFLOP/s against 95).
    """
    if use_gpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def resolve_precision(scaling: ScalingConfig) -> str:
    """The precision a run uses: the configured one, or for `auto` what this hardware runs fast."""
    if scaling.precision != "auto":
        return scaling.precision
    return "bf16" if fast_bf16(scaling.use_gpu) else "fp32"


def deepspeed_config(scaling: ScalingConfig, optim: OptimConfig, stage: StageConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of a stage: ZeRO, offload, precision, accumulation, clipping, AdamW, warm-up + cosine."""
    zero: dict[str, Any] = {"stage": scaling.zero_stage}
    if scaling.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": scaling.use_gpu}
    if scaling.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": scaling.use_gpu}
    if scaling.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    warmup = int(optim.warmup_ratio * stage.max_steps)
    return {
        "train_micro_batch_size_per_gpu": scaling.micro_batch_size,
        "gradient_accumulation_steps": scaling.grad_accum,
        "train_batch_size": scaling.micro_batch_size * scaling.grad_accum * max(world_size, 1),
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": resolve_precision(scaling) == "bf16"},
        # torch_adam: PyTorch's AdamW instead of DeepSpeed's fused op, which would be JIT-compiled on CPU;
        # DeepSpeed hands the remaining params to torch.optim.AdamW, `fused` among them.
        "optimizer": {"type": "AdamW", "params": {
            "lr": stage.lr or optim.lr, "betas": list(optim.betas), "weight_decay": optim.weight_decay,
            "torch_adam": True, "fused": optim.fused}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": stage.max_steps, "warmup_num_steps": max(warmup, 1), "warmup_min_ratio": 0.0,
            "cos_min_ratio": optim.min_lr_ratio, "warmup_type": "linear"}},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _forget_stale_groups() -> None:
    """Drop DeepSpeed's cached process groups before a new one-process group is made.

    DeepSpeed keeps its communication backend and parallel groups in module globals; in local mode
    stages run one after another in one process and each destroys its group at the end, so the
    cached objects of the previous stage would point at a destroyed group.
    """
    import deepspeed.comm.comm as ds_comm
    from deepspeed.utils import groups

    ds_comm.cdb = None
    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP",
                 "_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP"):
        setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        getattr(groups, name).clear()


@contextmanager
def process_group(use_gpu: bool) -> Iterator[None]:
    """Join the process group Ray Train made, or make a one-process group for the block (local mode).

    A one-process group needs RANK/WORLD_SIZE/MASTER_* (else DeepSpeed looks for MPI); they are
    removed and the group destroyed afterwards, so the next stage in the same process starts clean.
    """
    import deepspeed
    import torch.distributed as dist

    added = []
    if not dist.is_initialized():
        defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        added = [key for key in defaults if key not in os.environ]
        os.environ.update({key: defaults[key] for key in added})
        _forget_stale_groups()
    if not use_gpu:
        _no_shared_memory_reduce()
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    try:
        yield
    finally:
        if added:
            if dist.is_initialized():
                dist.destroy_process_group()
            for key in added:
                os.environ.pop(key, None)


def _no_shared_memory_reduce() -> None:
    """Keep DeepSpeed's CPU backend from building its shared-memory all-reduce op (`deepspeed_shm_comm`).

    DeepSpeed compiles it the first time a process group starts on a CPU (57 s of the demo's first stage
    on 2 AVX2 cores, in a fresh clone; after that a build check and a load in every stage's worker) and
    uses it only in `inference_all_reduce`, the tensor-parallel inference path (AutoTP). Training's
    gradients are all-reduced through torch.distributed (gloo) with or without it. DeepSpeed decides
    whether to build an op from `deepspeed.ops.__compatible_ops__`, probed once per process and kept in
    the module, so an op marked incompatible there is not built.
    """
    import deepspeed.ops

    try:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    except AttributeError:  # a DeepSpeed without the probe: it builds no such op
        pass


@contextmanager
def zero3_loading(config: dict[str, Any]) -> Iterator[None]:
    """While active, `from_pretrained` partitions weights across ranks as it loads (ZeRO-3 only)."""
    if config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig(config)  # transformers reads it through a weak reference: keep it alive
    yield
    del keep


class Engine:
    """A model wrapped by DeepSpeed: the only object the training loop steps."""

    def __init__(self, model: torch.nn.Module, config: dict[str, Any]) -> None:
        import deepspeed

        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("no trainable parameters")
        self.config = config
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=trainable, config=config)
        if config["zero_optimization"]["stage"] == 0 and self.engine.dp_world_size == 1:
            # One data-parallel rank has nothing to average, yet DeepSpeed would still flatten every
            # gradient into buckets, all-reduce them through gloo with itself, scale them by 1/1 and copy
            # them back, every step. Without ZeRO nothing else rides on that pass (ZeRO 1-2 move gradients
            # into their partitions there, so they keep it); the weights come out bit for bit the same.
            self.engine.enable_backward_allreduce = False
        self._forward = selective_forward(self.engine, self.engine.module)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def forward(self, *args, **kwargs):
        """The model's forward through DeepSpeed; `logits_at=` ([B, T] bool) restricts the output head to
        those positions (see `pedray.model.selective`)."""
        return self._forward(*args, **kwargs)

    def backward_and_step(self, loss: torch.Tensor) -> bool:
        """Backward a micro-batch and step; True when this micro-batch completed an optimizer step."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)
        self.engine.step()
        return boundary

    def save(self, folder: str | Path) -> None:
        """Every rank writes its share (model, optimizer, scheduler) under `folder/deepspeed`."""
        self.engine.save_checkpoint(str(Path(folder) / "deepspeed"), tag=TAG)

    def load(self, folder: str | Path) -> None:
        path = Path(folder) / "deepspeed"
        loaded, _ = self.engine.load_checkpoint(str(path), tag=TAG)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (gathered under ZeRO-3; every rank must call), None elsewhere."""
        import torch.distributed as dist

        if self.config["zero_optimization"]["stage"] == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        rank = dist.get_rank() if dist.is_initialized() else 0
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()} if rank == 0 and state else None


def memory_estimate(total_params: int, largest_layer_params: int, zero_stage: int, gpus_per_node: int,
                    nodes: int) -> str:
    """DeepSpeed's own estimate of model-state memory per GPU and per node (its printed table)."""
    import contextlib
    import io

    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        if zero_stage == 3:
            estimate_zero3_model_states_mem_needs_all_cold(total_params, largest_layer_params, gpus_per_node, nodes)
        else:
            estimate_zero2_model_states_mem_needs_all_cold(total_params, gpus_per_node, nodes)
    return buffer.getvalue()
