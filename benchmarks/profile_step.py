"""Where one training step's time goes: torch.profiler on petseg's training step, grouped by module.

    python benchmarks/profile_step.py                       # resnet34-unet, 256 px, batch 8, bf16 (CPU)
    python benchmarks/profile_step.py --precision fp32 --steps 2
    python benchmarks/profile_step.py --smoke               # 32 px, batch 2: the same code in seconds

The step is petseg's own (Training.to_device, autocast, cross-entropy, backward, fused Adam) on a batch
that went through petseg's dataset and augmentation. Each operator's self time is charged to a group:

- encoder: the ResNet34 encoder's convolutions, ReLUs, pooling and residual additions
- decoder convs: the bridge, decoder and up-sampling convolutions and the head
- decoder other: the decoder's ReLUs and concatenations
- CBAM: everything inside the attention modules (pooling, their 1x1 and 7x7 convs, sigmoid, products)
- BatchNorm: every BatchNorm2d, encoder and decoder
- loss, optimizer, data: cross-entropy, Adam (and zero_grad), batch assembly and normalisation

Backward operators are charged to the forward operator that recorded them (the autograd sequence
number). Prints the CPU capability, the groups by self time, and the top operators with their group.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from common import parse_args  # noqa: E402
from petseg_cli.data.dataset import SegmentationDataset  # noqa: E402
from petseg_cli.data.transforms import build_augmentation, normalize  # noqa: E402
from petseg_cli.models import build_model  # noqa: E402
from petseg_cli.models.resnet34_unet import CBAM  # noqa: E402
from petseg_cli.machine.precision import Precision, choose_channels_last, cpu_has_native_bf16, read_cpu_flags  # noqa: E402
from petseg_cli.config.settings import AugmentSettings  # noqa: E402

MODULE_PREFIX = "module: "
SCOPES = ("data", "loss", "optimizer")
OTHER = "other"


def group_of(name: str, module: nn.Module, cbam_names: set[str]) -> str:
    """The group of the innermost module ``name``: CBAM first, then BatchNorm, encoder, decoder."""
    if any(name == c or name.startswith(c + ".") for c in cbam_names):
        return "CBAM"
    if isinstance(module, nn.BatchNorm2d):
        return "BatchNorm"
    if name.startswith("encoder"):
        return "encoder"
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return "decoder convs"
    return "decoder other"


def label_modules(model: nn.Module) -> dict[str, str]:
    """A record_function scope around every module's forward; returns scope name -> group."""
    cbam_names = {name for name, m in model.named_modules() if isinstance(m, CBAM)}
    groups = {}
    for name, module in model.named_modules():
        scope = MODULE_PREFIX + (name or "model")
        groups[scope] = group_of(name, module, cbam_names) if name else "decoder other"
        handles: list = []

        def enter(mod, args, scope=scope, handles=handles):
            handles.append(torch.ops.profiler._record_function_enter_new(scope, None))

        def leave(mod, args, output, handles=handles):
            torch.ops.profiler._record_function_exit._RecordFunction(handles.pop())

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)
    return groups


def innermost_scope(event, groups: dict[str, str]) -> str | None:
    while event is not None:
        if event.name in groups or event.name in SCOPES:
            return event.name
        event = event.cpu_parent
    return None


def attribute(events, groups: dict[str, str]) -> dict[int, str]:
    """Event id -> group, for every event; backward ones through their forward's sequence number."""
    by_sequence: dict[int, str] = {}
    for e in events:
        scope = innermost_scope(e, groups)
        if scope is not None and e.sequence_nr >= 0 and not e.name.startswith("autograd::engine"):
            by_sequence.setdefault(e.sequence_nr, groups.get(scope, scope))
    result = {}
    for e in events:
        scope = innermost_scope(e, groups)
        group = groups.get(scope, scope) if scope else None
        if group is None or group == "loss":
            # A backward operator: find the autograd node that ran it, then the forward that made the node.
            node = e
            while node is not None and not node.name.startswith("autograd::engine::evaluate_function"):
                node = node.cpu_parent
            if node is not None and node.sequence_nr in by_sequence:
                group = by_sequence[node.sequence_nr]
        result[id(e)] = group or OTHER
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet34-unet")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("-b", "--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=1, help="profiled steps (after two warm-up steps)")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--no-cbam", action="store_true")
    args = parse_args(parser, smoke={"image_size": 32, "batch_size": 2, "top": 5})

    torch.manual_seed(0)
    device = torch.device("cpu")
    precision = Precision(args.precision, "cpu", cpu_has_native_bf16(read_cpu_flags()))
    memory_format = torch.channels_last if choose_channels_last("auto", "cpu", precision.name) else torch.contiguous_format
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {precision.native_bf16}, "
          f"AMX: {bool({'amx_bf16', 'amx_tile'} & read_cpu_flags())}; load "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"{args.model}, {args.image_size} px, batch {args.batch_size}, {precision.name}, "
          f"{'channels_last' if memory_format == torch.channels_last else 'NCHW'}, fused Adam")

    model = build_model(args.model, cbam=not args.no_cbam).to(device, memory_format=memory_format)
    groups = label_modules(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    n = args.batch_size
    images = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (n, args.image_size, args.image_size), dtype=np.uint8)
    dataset = SegmentationDataset(images, masks, build_augmentation(AugmentSettings(), args.image_size))

    def step(index: int) -> None:
        with torch.profiler.record_function("data"):
            items = [dataset[(i, index * n + i)] for i in range(n)]
            x = torch.stack([i[0] for i in items]).contiguous(memory_format=memory_format)
            y = torch.stack([i[1] for i in items])
            x = normalize(x)
        with precision.autocast():
            logits = model(x)
            with torch.profiler.record_function("loss"):
                loss = loss_fn(logits, y)
        loss.backward()
        with torch.profiler.record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    model.train()
    for i in range(2):
        step(i)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(args.steps):
            step(2 + i)
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    where = attribute(events, groups)
    total = sum(e.self_cpu_time_total for e in events) / 1000 / args.steps

    by_group: dict[str, float] = defaultdict(float)
    by_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.name.startswith(MODULE_PREFIX) or e.name in SCOPES:
            continue  # our scopes: their own self time is the hooks'
        ms = e.self_cpu_time_total / 1000 / args.steps
        by_group[where[id(e)]] += ms
        by_op[(e.name, where[id(e)])][0] += ms
        by_op[(e.name, where[id(e)])][1] += 1 / args.steps
    print(f"\nself time per step: {total:.1f} ms (operators {sum(by_group.values()):.1f} ms)")
    print(f"{'group':16s} {'ms/step':>9s} {'share':>7s}")
    for group, ms in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"{group:16s} {ms:9.1f} {ms / total:7.1%}")
    print(f"\ntop {args.top} operators by self time")
    print(f"{'operator':44s} {'group':16s} {'ms/step':>9s} {'calls':>6s}")
    for (name, group), (ms, calls) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{name[:44]:44s} {group:16s} {ms:9.1f} {calls:6.0f}")


if __name__ == "__main__":
    main()
