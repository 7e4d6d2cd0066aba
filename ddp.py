"""Data-parallel training under torchrun, for pairtune.py and finetune.py. torch.distributed is the
engine; this module holds only what the two stage scripts need from it:

    torchrun --nproc-per-node 4 pairtune.py --dataset gtzan --backbone wav2vec2   # 4 GPUs, NCCL
    torchrun --nproc-per-node 2 finetune.py --dataset demo --backbone tiny --device cpu  # gloo
    python pairtune.py ...                       # one process: nothing here changes anything

- `start` joins the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR/PORT); without torchrun (or with one process) it does nothing.
- `ShardedBatches` deals each global batch out to the ranks in contiguous slices, so the ranks'
  batches together are exactly the batch one process would draw with the same seed.
- `gather_with_grad` concatenates every rank's embeddings for the contrastive loss, the gradient
  flowing back to each rank's own slice.
- Rank 0 alone writes files and prints; the epoch's valid metric is computed there and broadcast
  (`broadcast_float`), so every rank selects the same epoch.
"""
import datetime
import functools
import os
import sys

import torch
import torch.distributed as dist

# torch 2.14 renamed all_gather_into_tensor (one output tensor for all ranks) to all_gather_single.
_all_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def start(device: torch.device) -> torch.device:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) and return this rank's device.
    A plain `python script.py` (no WORLD_SIZE, or 1) returns the device unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":  # one GPU per process: the local rank picks it
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    # Ranks 1.. wait at a broadcast while rank 0 evaluates and saves an epoch: a generous timeout,
    # so a long valid pass on a big dataset is not taken for a hung peer.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # one rank's epoch lines are enough; errors still reach stderr
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def stop():
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_this_rank(seed: int):
    """After the weights are built (the same on every rank, from the run's seed): a stream of this
    rank's own for dropout and crops, so the ranks' noise is not the same noise on other clips.
    Nothing changes with one process."""
    if world_size() > 1:
        torch.manual_seed(seed * 1_000 + rank())


def worker_init(num_workers: int):
    """DataLoader workers draw their crops from base_seed + worker id, the base seed coming from the
    loader's generator, which is the same on every rank (it also shuffles FineTune's global batches);
    under torchrun, this shifts each rank's workers to seeds of their own. None with one process."""
    return functools.partial(_shift_worker_seed, rank() * num_workers) if world_size() > 1 else None


def _shift_worker_seed(shift: int, worker_id: int):
    torch.manual_seed(torch.utils.data.get_worker_info().seed + shift)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model under torchrun, the model itself otherwise.

    find_unused_parameters: Whisper's classification wrapper holds a projector and classifier we
    never run, wav2vec2 a masking embedding used only with SpecAugment, and LayerDrop skips layers
    at random; DDP must not wait for their gradients."""
    if world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True,
        broadcast_buffers=False)  # no batch-norm statistics to keep in step


class ShardedBatches(torch.utils.data.Sampler):
    """This rank's share of each batch of a global batch sampler: slice `rank` of `world` contiguous,
    near-equal slices (np.array_split's sizes). Concatenated in rank order, the shards are the
    global batch. A P x K batch (P classes of K clips, in class order) with P divisible by the world
    size is dealt out in whole classes, so every anchor keeps its positives on its own rank.

    A global batch with fewer clips than ranks (a last, short batch) is skipped on every rank, since
    a rank with nothing to encode cannot take part in the gradient's all-reduce."""

    def __init__(self, batch_sampler, rank: int, world: int):
        self.batch_sampler, self.rank, self.world = batch_sampler, rank, world

    def set_epoch(self, epoch: int):
        self.batch_sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.batch_sampler)  # an upper bound when a short last batch is skipped

    def __iter__(self):
        for batch in self.batch_sampler:
            if len(batch) < self.world:
                continue
            base, extra = divmod(len(batch), self.world)
            begin = self.rank * base + min(self.rank, extra)
            yield batch[begin:begin + base + (self.rank < extra)]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum, over ranks, of the gradient on its slice.

    Every rank computes the loss of the whole gathered batch, so each holds a full dL/dZ; summing
    them gives world x dL/dz_rank, which DDP's averaging of parameter gradients over the ranks
    brings back to exactly the gradient of one process on the concatenated batch. (A plain
    all_gather returns tensors without a graph: the other ranks' embeddings would get no gradient.)"""

    @staticmethod
    def forward(ctx, x):
        ctx.rows = x.shape[0]
        return gather(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[rank() * ctx.rows:(rank() + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x (all the same shape), concatenated in rank order; x itself with one process."""
    return _GatherWithGrad.apply(x) if world_size() > 1 else x


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x concatenated in rank order, without a graph (labels)."""
    if world_size() == 1:
        return x
    gathered = torch.empty((world_size() * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_into(gathered, x.contiguous())
    return gathered


def summed(value: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor (PairTune's per-class sums of r for its epoch-centroid metric)."""
    if world_size() == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def average(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor (a step's loss, for the log)."""
    return summed(value) / world_size() if world_size() > 1 else value


def total(count: int, device: torch.device) -> int:
    """The sum over ranks of an integer (the clips of a global batch)."""
    if world_size() == 1:
        return count
    tensor = torch.tensor([count], device=device)
    dist.all_reduce(tensor)
    return int(tensor.item())


def broadcast_float(value: float | None, device: torch.device) -> float:
    """Rank 0's value on every rank (the others pass None)."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value if is_main() else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.item()


def gather_objects(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (random states for the checkpoint)."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered

