"""The training loop: seeded, checkpointed, and data-parallel under torchrun.

Run directly it trains in one process (CUDA when present). Run under
`torchrun --nproc_per_node=N` it wraps the model in DistributedDataParallel (gloo on CPU, nccl on
GPU), gives each rank a disjoint shard of every epoch, and checks at the end that all ranks hold
bit-identical parameters.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from .data import ImageRows, as_rows
from .loss import reconstruction_nll
from .model import VAE, ConvVAE, ModelConfig, build_vae, config_from_dict

__all__ = [
    "GRAD_CLIP_NORM",
    "Checkpoint",
    "DistContext",
    "Schedule",
    "TrainingDiverged",
    "launched_distributed",
    "parameter_digest",
    "setup_distributed",
    "train",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

# The summed-pixel loss gives gradient norms in the hundreds; a rare spike in exp(logvar) can
# push one far beyond and wreck Adam's moments (seen: NaN after 15 epochs at lr 2e-3 unclipped).
GRAD_CLIP_NORM = 100.0


@dataclass(frozen=True)
class Schedule:
    """What changes with the step: the learning rate's warm-up and cosine decay, and the KL weight.

    The learning rate rises linearly over `lr_warmup_steps`, then falls to 0 on a cosine by
    `total_steps`. The KL term's weight rises linearly from 0 to 1 over `kl_warmup_steps` (KL
    annealing, Bowman et al. 2016): early on the decoder learns to use the latents before the
    KL term pushes the posteriors onto the prior, so fewer latent dimensions collapse. Both are
    closed forms of the step, so a resumed run picks them up where it stopped.
    """

    total_steps: int
    lr_warmup_steps: int = 0
    kl_warmup_steps: int = 0

    def lr_factor(self, step: int) -> float:
        if step < self.lr_warmup_steps:
            return (step + 1) / self.lr_warmup_steps
        decay = max(1, self.total_steps - self.lr_warmup_steps)
        done = min(step - self.lr_warmup_steps, decay)
        return 0.5 * (1 + math.cos(math.pi * done / decay))

    def kl_weight(self, step: int) -> float:
        return min(1.0, step / self.kl_warmup_steps) if self.kl_warmup_steps else 1.0


class TrainingDiverged(Exception):
    """The loss stopped being finite; the message says when, so the run can be resumed lower."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """Whether torchrun (or another launcher that sets WORLD_SIZE) started this process as one of
    several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(device: str) -> DistContext:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not launched_distributed():
        return DistContext(device=torch.device("cuda" if use_cuda else "cpu"))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return DistContext(rank, world, torch.device("cuda", local))
    return DistContext(rank, world, torch.device("cpu"))


@dataclass
class Checkpoint:
    """Everything needed to resume: saved as plain tensors and numbers (loads with weights_only)."""

    config: ModelConfig
    epoch: int
    model: dict
    optimizer: dict
    scheduler: dict
    train_seconds: float
    rng: torch.Tensor  # the noise generator's state, so a resumed run draws what it would have

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({**self.__dict__, "config": self.config.to_dict()}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(**{**data, "config": config_from_dict(data["config"])})


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    images: torch.Tensor | ImageRows,
    sampler: DistributedSampler,
    batch_size: int,
    progress: tqdm | None = None,
    schedule: Schedule | None = None,
) -> float:
    """One pass over this rank's shard; returns the mean -ELBO per image over all ranks (the
    whole KL term counted, whatever weight the step gave it)."""
    model.train()
    rows = as_rows(images)
    total = torch.zeros(2, device=rows.device)  # [sum of -ELBOs, images seen]
    for x in rows.batches(batch_size, order=list(sampler)):
        logits, kl = model(x)
        reconstruction = reconstruction_nll(logits, x)
        elbo = (reconstruction + kl).mean()
        weight = schedule.kl_weight(scheduler.last_epoch) if schedule else 1.0  # last_epoch counts steps
        loss = elbo if weight == 1.0 else (reconstruction + weight * kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        scheduler.step()
        total += torch.stack([elbo.detach() * len(x), torch.tensor(len(x), device=x.device)])
        if progress is not None:
            progress.update(len(x) * (dist.get_world_size() if dist.is_initialized() else 1))
            progress.set_postfix(loss=f"{elbo.item():.2f}", refresh=False)
    if dist.is_initialized():
        dist.all_reduce(total)  # every rank sees the same figure, so all stop together below
    return (total[0] / total[1]).item()


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on all ranks iff DDP kept them in lockstep."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _optimizer(model: VAE | ConvVAE, lr: float, schedule: Schedule) -> tuple[torch.optim.Adam, LambdaLR]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # A closed form of the step, so a resumed run with more --epochs stretches the decay. A plain
    # function, not a bound method, so the scheduler's state dict holds no callable's attributes.
    return optimizer, LambdaLR(optimizer, lambda step: schedule.lr_factor(step))


def train(
    config: ModelConfig,
    images: torch.Tensor | ImageRows,
    *,
    ctx: DistContext,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    checkpoint_path: Path | None = None,
    resume: Checkpoint | None = None,
    lr_warmup_epochs: int = 0,
    kl_warmup_epochs: int = 0,
) -> tuple[VAE | ConvVAE, float]:
    """Train to `epochs` total epochs (continuing `resume`) on `images`, rows [N, D] in [0, 1];
    returns the model and seconds spent. The learning rate warms up over `lr_warmup_epochs` and
    the KL term's weight over `kl_warmup_epochs` (see Schedule)."""
    torch.manual_seed(seed)  # identical initial weights on every rank
    images = as_rows(images)
    model = build_vae(resume.config if resume else config).to(ctx.device)
    steps_per_epoch = math.ceil(math.ceil(len(images) / ctx.world_size) / batch_size)
    schedule = Schedule(
        max(1, epochs * steps_per_epoch),
        lr_warmup_epochs * steps_per_epoch,
        kl_warmup_epochs * steps_per_epoch,
    )
    optimizer, scheduler = _optimizer(model, lr, schedule)
    start_epoch, seconds = 0, 0.0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        start_epoch, seconds = resume.epoch, resume.train_seconds
    wrapped = DistributedDataParallel(model) if dist.is_initialized() else model
    # torch annotates a Dataset, but the sampler only takes len() of it: positions are all it draws.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(images)),  # type: ignore[arg-type]
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        seed=seed,
    )
    torch.manual_seed(seed + 1 + ctx.rank)  # distinct reparameterisation noise per rank
    if resume is not None and ctx.world_size == 1:
        torch.set_rng_state(resume.rng)
    for epoch in range(start_epoch, epochs):
        began = time.perf_counter()
        sampler.set_epoch(epoch)
        label = f"epoch {epoch + 1}/{epochs}"
        with tqdm(total=len(images), desc=label, unit="img", disable=not ctx.is_main, leave=False) as bar:
            loss = train_one_epoch(wrapped, optimizer, scheduler, images, sampler, batch_size, bar, schedule)
        seconds += time.perf_counter() - began
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} in epoch {epoch + 1}; lower --lr and --resume")
        if ctx.is_main:
            log.info("%s: train -ELBO %.2f nats (%.1f s)", label, loss, seconds)
        if ctx.is_main and checkpoint_path is not None:
            states = (model.state_dict(), optimizer.state_dict(), scheduler.state_dict())
            Checkpoint(model.config, epoch + 1, *states, seconds, torch.get_rng_state()).save(checkpoint_path)
    return model, seconds
