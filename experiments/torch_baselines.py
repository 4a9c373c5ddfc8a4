"""PyTorch twins of two models of :mod:`poisoning.models`, for ``experiments.bench_training`` only.

PyTorch is an optional dependency (the ``bench`` extra: ``pip install torch==2.13.0``, the CPU
build); nothing else in the project imports it, and this module imports it only inside its functions.

- :func:`badnets`: the BadNets MNIST network (Gu et al. 2017, Table 1), as
  :class:`poisoning.models.BadNetsCNN`;
- :func:`resnet18`: the CIFAR ResNet-18 of the poisoning benchmark (Kuang Liu's ``pytorch-cifar``), as
  ``poisoning.models.get_model("resnet18")``.

Both have exactly the parameter counts of their flax twins (checked by :func:`count_params` in the
benchmark's output). :func:`time_training` runs ``steps`` SGD steps (momentum 0.9, weight decay,
the same as the JAX side) on in-memory tensors, batches drawn from a seeded permutation by indexing,
and returns images per second (median and best of ``repeats`` timed runs) and images per CPU-second.
"""

from __future__ import annotations

import time

__all__ = ["torch_available", "badnets", "resnet18", "build", "count_params", "time_training"]


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def badnets(num_classes: int = 10):
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, num_classes),
    )


def resnet18(num_classes: int = 10):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            layers, cin = [], 64
            for i, cout in enumerate((64, 128, 256, 512)):
                for j in range(2):
                    layers.append(Block(cin, cout, 2 if (i > 0 and j == 0) else 1))
                    cin = cout
            self.layers = nn.Sequential(*layers)
            self.linear = nn.Linear(512, num_classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layers(out)
            out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
            return self.linear(out)

    return ResNet18()


def build(name: str, num_classes: int = 10):
    if name == "badnets":
        return badnets(num_classes)
    if name == "resnet18":
        return resnet18(num_classes)
    raise ValueError(f"no PyTorch twin for model {name!r} (have 'badnets', 'resnet18')")


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def time_training(
    name: str,
    x,
    y,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
    threads: int,
    channels_last: bool = False,
    bf16: bool = False,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 1,
    seed: int = 0,
) -> dict:
    """Images per second of ``steps`` training steps of ``name`` (NHWC numpy ``x``, integer ``y``)."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = build(name).to(dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).to(dev)
    xt = xt.contiguous(memory_format=memory_format)
    yt = torch.from_numpy(np.asarray(y, np.int64)).to(dev)
    n = xt.shape[0]
    gen = torch.Generator().manual_seed(seed)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16)

    def run(k):
        perm = torch.randperm(n, generator=gen).to(dev)
        loss = None
        for s in range(k):
            idx = perm[(s * batch_size) % (n - batch_size + 1):][:batch_size]
            xb = xt.index_select(0, idx)
            if channels_last:
                xb = xb.contiguous(memory_format=memory_format)
            with autocast:
                loss = loss_fn(model(xb), yt.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    model.train()
    run(warmup)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        last_loss = run(steps)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    seconds = float(np.median(times))
    return {
        "framework": f"torch {torch.__version__}",
        "params": count_params(model),
        "seconds": seconds,
        "times": times,
        "images_per_s": steps * batch_size / seconds,
        "best_images_per_s": steps * batch_size / min(times),
        "images_per_cpu_s": steps * batch_size / min(cpu),
        "last_loss": last_loss,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "channels_last": channels_last,
        "bf16": bf16,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "device": str(dev),
    }
