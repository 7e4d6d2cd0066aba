"""Data-parallel training (ddp.py) on CPU with gloo and 2 processes, against one process.

- The sharded batches: disjoint, class-balanced in whole classes, together the global batch.
- One PairTune step (eager and fused loss, with and without gradient caching) and one FineTune step
  (uneven shares, with and without accumulation) under DDP give the same updated weights as one
  process on the concatenated batch. The optimiser is SGD, whose update is proportional to the
  gradient: Adam's first step is about lr x sign(gradient), blind to a wrongly scaled one.
- GradCache alone: equal to the plain step with dropout on, and it needs its saved random states.
- --grad-checkpointing: the same gradient, with each layer run twice.
- torchrun end to end: a 2-epoch run of each arm writes the same files as a single-process run;
  --resume works on 2 processes and refuses another number.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

import backbone
import data
import ddp
import finetune
import pairtune
from conftest import ROOT, run_script

WORLD = 2


# ----------------------------------------------------------------------------------------------
# Sharded batches (no process group needed)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 4])
def test_pxk_shards_are_whole_classes_and_together_the_global_batch(world):
    labels = [i % 12 for i in range(150)]  # 12 classes, uneven sizes after the cut
    sampler = data.ClassBalancedBatchSampler(labels[:143], classes_per_batch=8, clips_per_class=3, seed=5)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        shards = []
        for rank in range(world):
            shard = ddp.ShardedBatches(sampler, rank, world)
            shard.set_epoch(epoch)
            shards.append(list(shard))
        global_batches = list(sampler)
        assert all(len(s) == len(global_batches) for s in shards)
        for step, batch in enumerate(global_batches):
            parts = [shards[rank][step] for rank in range(world)]
            assert sum(parts, []) == batch  # concatenated in rank order: the one-process batch
            for part in parts:
                part_labels = [labels[i] for i in part]
                counts = {c: part_labels.count(c) for c in set(part_labels)}
                # whole classes: 8 / world classes of 3 clips each, none shared with another rank
                assert len(counts) == 8 // world and set(counts.values()) == {3}
            for a in range(world):
                for b in range(a + 1, world):
                    assert not {labels[i] for i in parts[a]} & {labels[i] for i in parts[b]}


def test_uneven_batches_are_shared_near_equally_and_a_batch_smaller_than_the_world_is_skipped():
    batches = [list(range(0, 7)), list(range(7, 14)), [14]]
    shards = [list(ddp.ShardedBatches(batches, rank, 2)) for rank in range(2)]
    assert shards[0] == [[0, 1, 2, 3], [7, 8, 9, 10]] and shards[1] == [[4, 5, 6], [11, 12, 13]]
    assert [len(s) for s in ddp.ShardedBatches([list(range(10))], 0, 4)] == [3]
    assert [list(ddp.ShardedBatches([list(range(10))], r, 4))[0] for r in range(4)] == \
        [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


# ----------------------------------------------------------------------------------------------
# One step under DDP (2 gloo processes) against one process on the concatenated batch
# ----------------------------------------------------------------------------------------------

CLASSES, CLIPS_PER_CLASS = 4, 2  # PairTune's global batch: 4 classes x 2 clips, 2 classes a process
FINETUNE_BATCH = 7  # odd: the processes get 4 and 3 clips
CASES = {  # name: (arm, loss, micro_batch)
    "pairtune-eager": ("pairtune", "eager", None),
    "pairtune-fused": ("pairtune", "fused", None),
    "pairtune-eager-gradcache": ("pairtune", "eager", 1),
    "finetune": ("finetune", None, None),
    "finetune-accumulated": ("finetune", None, 2),
}


def without_dropout(encoder):
    """Dropout and LayerDrop off: each process draws its own masks, so only then can a DDP step
    equal one process's."""
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    encoder.model.config.layerdrop = 0.0
    return encoder


def global_batch(arm):
    """Waves of different lengths (so padding differs between the shares) and their labels."""
    rng = np.random.default_rng(7)
    if arm == "pairtune":
        labels = [c for c in range(CLASSES) for _ in range(CLIPS_PER_CLASS)]  # P x K order
    else:
        labels = [int(c) for c in rng.integers(0, 3, FINETUNE_BATCH)]
    waves = [(0.1 * rng.standard_normal(int(rng.integers(2400, 4000)))).astype(np.float32) for _ in labels]
    return waves, labels


def one_step(arm, loss, micro_batch, rank, world):
    """The weights after one SGD step of `arm` on this process's share of the global batch."""
    torch.manual_seed(0)
    encoder = without_dropout(backbone.load_encoder("tiny"))
    n_out = 16 if arm == "pairtune" else 3
    head = nn.Linear(encoder.hidden_size, n_out)
    waves, labels = global_batch(arm)
    share = list(ddp.ShardedBatches([list(range(len(labels)))], rank, world))[0]
    loader = [(encoder.preprocess([waves[i] for i in share]), torch.tensor([labels[i] for i in share]))]
    args = argparse.Namespace(loss=loss, temperature=0.1, mining="ms", epsilon=0.1, micro_batch=micro_batch)
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.5)
    cpu = torch.device("cpu")
    if arm == "pairtune":
        model = ddp.wrap(pairtune.Embedder(encoder, head, "fp32"), cpu)
        loss_value, clips = pairtune.train_one_epoch(model, loader, optimizer, args, cpu, epoch=1)
    else:
        model = ddp.wrap(finetune.Classifier(encoder, head, "fp32"), cpu)
        loss_value, clips = finetune.train_one_epoch(model, loader, optimizer, args, cpu, epoch=1)
    assert clips == len(labels)
    weights = {f"encoder.{k}": v.clone() for k, v in encoder.model.state_dict().items()}
    weights.update({f"head.{k}": v.clone() for k, v in head.state_dict().items()})
    return weights, loss_value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    saved_stdout = sys.stdout
    ddp.start(torch.device("cpu"))
    sys.stdout = saved_stdout
    assert ddp.world_size() == world and ddp.rank() == rank
    results = {name: one_step(*case, rank, world) for name, case in CASES.items()}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    ddp.stop()


@pytest.fixture(scope="module")
def ddp_steps(tmp_path_factory):
    """Every case's weights after one step on each of 2 gloo processes (one spawn for all cases)."""
    out = tmp_path_factory.mktemp("ddp-steps")
    mp.spawn(_step_worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


def assert_same_weights(got, want, atol=1e-5):
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst <= atol, f"largest weight difference {worst:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_a_ddp_step_equals_one_process_on_the_concatenated_batch(ddp_steps, case):
    arm, loss, micro_batch = CASES[case]
    reference, reference_loss = one_step(arm, loss, None, rank=0, world=1)  # plain step, whole batch
    for rank in range(WORLD):
        weights, loss_value = ddp_steps[rank][case]
        assert_same_weights(weights, reference)
        assert loss_value == pytest.approx(reference_loss, rel=1e-5)


def test_the_step_moves_the_weights_so_equality_means_something(ddp_steps):
    torch.manual_seed(0)
    start = without_dropout(backbone.load_encoder("tiny")).model.state_dict()
    for case in CASES:
        weights, _ = ddp_steps[0][case]
        moved = max((weights[f"encoder.{k}"] - v).abs().max().item() for k, v in start.items())
        assert moved > 1e-3, case


def test_a_step_with_half_the_gradient_would_be_caught():
    """The tolerance above separates the right step from one whose gradient is off by DDP's factor 2
    (a plain all_gather without the summed-back gradient, or a loss not scaled for the average)."""
    reference, _ = one_step("finetune", None, None, rank=0, world=1)
    torch.manual_seed(0)
    encoder = without_dropout(backbone.load_encoder("tiny"))
    start = {f"encoder.{k}": v for k, v in encoder.model.state_dict().items()}
    halfway = {k: (start[k] + reference[k]) / 2 for k in start}  # the step with half the gradient (SGD)
    with pytest.raises(AssertionError):
        assert_same_weights(halfway, {k: reference[k] for k in start})


# ----------------------------------------------------------------------------------------------
# GradCache and gradient checkpointing in one process, dropout on
# ----------------------------------------------------------------------------------------------

def embedder_and_batch(dropout=True):
    """The tiny model with its dropout raised to 0.3 (and LayerDrop 0.1 as configured), or all off."""
    torch.manual_seed(0)
    encoder = backbone.load_encoder("tiny")
    if not dropout:
        without_dropout(encoder)
    for module in encoder.modules():
        if isinstance(module, nn.Dropout) and dropout:
            module.p = 0.3
    embedder = pairtune.Embedder(encoder, nn.Linear(encoder.hidden_size, 16), "fp32").train()
    waves, labels = global_batch("pairtune")
    return embedder, encoder.preprocess(waves), torch.tensor(labels)


def gradients(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def loss_of(labels):
    from losses import supcon_loss
    return lambda z: supcon_loss(z, labels, temperature=0.1, mining="none")


@pytest.mark.parametrize("micro_batch", [1, 3])
def test_gradient_caching_equals_the_plain_step_with_dropout_on(micro_batch):
    embedder, inputs, labels = embedder_and_batch()
    parts = [{k: v[i:i + micro_batch] for k, v in inputs.items()} for i in range(0, len(labels), micro_batch)]
    torch.manual_seed(11)
    # The plain step: the whole batch's graph at once, micro-batch by micro-batch from the same
    # random state, so each clip meets the dropout masks it meets in GradCache's first pass.
    plain_loss = loss_of(labels)(torch.cat([embedder(part) for part in parts]))
    plain_loss.backward()
    plain = gradients(embedder)
    embedder.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    cached_loss, _ = pairtune.gradient_cached_backward(embedder, inputs, loss_of(labels), micro_batch,
                                                       torch.device("cpu"))
    cached = gradients(embedder)
    assert cached_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert plain.keys() == cached.keys()
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-6)
    # ... and dropout is really on: the same clips encoded twice differ.
    assert not torch.allclose(embedder(parts[0]), embedder(parts[0]))


def test_gradient_caching_without_its_saved_random_states_would_differ(monkeypatch):
    embedder, inputs, labels = embedder_and_batch()
    torch.manual_seed(11)
    pairtune.gradient_cached_backward(embedder, inputs, loss_of(labels), 2, torch.device("cpu"))
    right = gradients(embedder)
    embedder.zero_grad(set_to_none=True)
    monkeypatch.setattr(pairtune, "set_rng_state", lambda state, device: None)  # the second pass's own masks
    torch.manual_seed(11)
    pairtune.gradient_cached_backward(embedder, inputs, loss_of(labels), 2, torch.device("cpu"))
    wrong = gradients(embedder)
    assert max((right[k] - wrong[k]).abs().max().item() for k in right) > 1e-4


def test_gradient_caching_with_dropout_off_equals_one_forward_of_the_whole_batch():
    embedder, inputs, labels = embedder_and_batch(dropout=False)
    loss_of(labels)(embedder(inputs)).backward()
    whole = gradients(embedder)
    embedder.zero_grad(set_to_none=True)
    pairtune.gradient_cached_backward(embedder, inputs, loss_of(labels), 3, torch.device("cpu"))
    for name, grad in gradients(embedder).items():
        torch.testing.assert_close(grad, whole[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_gradient_checkpointing_gives_the_same_gradient_and_recomputes_each_layer(family, request):
    embedder, inputs, labels = embedder_and_batch()
    if family == "whisper":  # our own loop over Whisper's layers: the real tiny.en encoder, dropout 0.3
        encoder = backbone.load_encoder(str(request.getfixturevalue("whisper_dir")))
        for module in encoder.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.3
        embedder = pairtune.Embedder(encoder, nn.Linear(encoder.hidden_size, 16), "fp32").train()
        waves, _ = global_batch("pairtune")
        inputs = encoder.preprocess(waves)
    layers = embedder.encoder.model.encoder.layers
    calls = []
    # A pre-hook inside the checkpointed layer: it runs again when backward recomputes the layer (a
    # forward hook might not, as the recomputation stops once the last saved tensor is rebuilt).
    for layer in layers:
        (layer.fc1 if family == "whisper" else layer.feed_forward).register_forward_pre_hook(lambda *_: calls.append(1))
    torch.manual_seed(3)
    loss_of(labels)(embedder(inputs)).backward()
    plain, plain_calls = gradients(embedder), len(calls)
    embedder.zero_grad(set_to_none=True)
    calls.clear()
    embedder.encoder.checkpoint_activations()
    torch.manual_seed(3)
    loss_of(labels)(embedder(inputs)).backward()
    assert plain_calls == len(layers) and len(calls) == 2 * len(layers)  # forward, then again in backward
    for name, grad in gradients(embedder).items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# torchrun end to end
# ----------------------------------------------------------------------------------------------

def torchrun(script, *args, processes=WORLD, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                             "--master-port", str(free_port()), str(ROOT / script), *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"torchrun {script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def files_of(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in Path(run_dir).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def small_demo(demo_manifest, tmp_path_factory):
    """Four of the demo's classes (96 train clips): torchrun starts two interpreters per run, so the
    runs themselves are kept short."""
    lines = demo_manifest.read_text().splitlines()
    kept = sorted({line.split(",")[1] for line in lines[1:]})[:4]
    root = demo_manifest.parent
    rows = [lines[0]] + [f"{root / line.split(',')[0]},{','.join(line.split(',')[1:])}" for line in lines[1:]
                         if line.split(",")[1] in kept]
    manifest = tmp_path_factory.mktemp("small-demo") / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def common_args(manifest):
    return ["--dataset", manifest, "--backbone", "tiny", "--max-seconds", "1", "--batch-size", "16",
            "--clips-per-class", "4", "--lr", "1e-3", "--device", "cpu", "--loss", "eager"]


@pytest.mark.parametrize("arm", ["pairtune.py", "finetune.py"])
def test_a_torchrun_run_writes_what_a_single_process_run_writes(small_demo, tmp_path, arm):
    args = common_args(small_demo) + ["--epochs", "2"]
    if arm == "finetune.py":
        args = [a for a in args if a not in ("--clips-per-class", "4", "--loss", "eager")]
    run_script(arm, *args, "--out", tmp_path / "single")
    result = torchrun(arm, *args, "--out", tmp_path / "ddp")
    assert files_of(tmp_path / "ddp") == files_of(tmp_path / "single")
    assert result.stdout.count("epoch 2/2") == 1  # rank 0 alone prints
    single, parallel = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("single", "ddp"))
    assert parallel.keys() == single.keys() and parallel["finished"] and parallel["clips"] == single["clips"]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2] and all(line["clips_per_s"] > 0 for line in log)
    key = "valid_acc" if arm == "finetune.py" else "valid_metric_acc"  # PairTune logs its selection metric's
    assert parallel["selected_epoch"] == max(log, key=lambda line: (line[key], -line["epoch"]))["epoch"]
    if arm == "finetune.py":
        results = json.loads((tmp_path / "ddp" / "results.json").read_text())
        assert results["selected_epoch"] == parallel["selected_epoch"] and 0 <= results["test_acc"] <= 1


def test_a_torchrun_run_resumes_on_as_many_processes_and_refuses_another_number(small_demo, tmp_path):
    args = common_args(small_demo) + ["--out", tmp_path / "run"]
    torchrun("pairtune.py", *args, "--epochs", "1", "--keep-checkpoint")
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert len(checkpoint["rng"]) == WORLD  # every process's random states
    refused = run_script("pairtune.py", *args, "--epochs", "2", "--resume", check=False)
    assert refused.returncode != 0 and "2 process(es) and this one has 1" in refused.stderr
    result = torchrun("pairtune.py", *args, "--epochs", "2", "--resume")
    assert "resumed from" in result.stdout
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["finished"]


def test_a_pxk_batch_that_cannot_be_shared_in_whole_classes_is_refused(small_demo, tmp_path):
    result = torchrun("pairtune.py", *common_args(small_demo), "--batch-size", "12", "--clips-per-class", "4",
                      "--epochs", "1", "--out", tmp_path / "run", check=False)
    assert result.returncode != 0 and "3 classes x 4 clips cannot be shared by 2 processes" in result.stderr
