"""Flax (linen) networks of the data-poisoning literature, and a registry.

Every model takes NHWC images in ``[0, 1]`` (``(N, H, W)`` for one channel), normalizes them with its
optional ``mean`` / ``std`` fields, and is called as ``model.apply(variables, x, train=False,
features=False)``: logits, or with ``features=True`` the penultimate representation (the input of
the dense layer ``params["head"]``). Models with BatchNorm keep their running statistics in the
``"batch_stats"`` collection (see :mod:`poisoning.training`).

==================  ==========================================  =========================  =============
name                class (module)                              published as               parameters
==================  ==========================================  =========================  =============
``badnets``         :class:`BadNetsCNN` (:mod:`.badnets`)       Gu et al. 2017, MNIST      281,034
``lenet5``          :class:`LeNet5` (:mod:`.lenet`)             LeCun et al. 1998          61,706
``convnet``         :class:`ConvNet` (:mod:`.convnet`)          Geiping et al. 2021        289,290
``resnet18``        :class:`ResNet` (:mod:`.resnet`)            CIFAR ResNet-18            11,173,962
``resnet20``        :class:`ResNet` (:mod:`.resnet`)            He et al. 2016, CIFAR      269,722
``preact_resnet18`` :class:`PreActResNet` (:mod:`.resnet`)      He et al. 2016b            11,171,146
``vgg11``           :class:`VGG` (:mod:`.vgg`)                  VGG-11-BN, CIFAR head      9,231,114
``mobilenetv2``     :class:`MobileNetV2` (:mod:`.mobilenet`)    Sandler et al. 2018, CIFAR 2,296,922
``nin``             :class:`NetworkInNetwork` (:mod:`.nin`)     DPA (Levine & Feizi 2021)  1,005,642
==================  ==========================================  =========================  =============

(parameter counts for 10 classes, CIFAR-10 input for the CIFAR models, MNIST for ``badnets`` and
``lenet5``; each is checked in ``tests/poisoning/models``.)

``get_model(name, num_classes, **knobs)`` builds one; the knobs (``width``, ``stage_sizes``,
``hidden``, ``width_mult``, ``channels``, ``mean``/``std``, ...) are the dataclass fields of its class.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from poisoning.models._common import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD
from poisoning.models.badnets import BadNetsCNN
from poisoning.models.convnet import ConvNet
from poisoning.models.lenet import LeNet5
from poisoning.models.mobilenet import MobileNetV2
from poisoning.models.nin import NetworkInNetwork
from poisoning.models.resnet import PreActResNet, ResNet
from poisoning.models.vgg import VGG

__all__ = [
    "MODELS",
    "BadNetsCNN",
    "LeNet5",
    "ConvNet",
    "ResNet",
    "PreActResNet",
    "VGG",
    "MobileNetV2",
    "NetworkInNetwork",
    "get_model",
    "default_input_shape",
    "count_params",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MNIST_MEAN",
    "MNIST_STD",
]

# name -> (class, fixed fields, input shape (H, W, C) of the data set it was published for)
MODELS: dict[str, tuple[type[nn.Module], dict, tuple[int, int, int]]] = {
    "badnets": (BadNetsCNN, {}, (28, 28, 1)),
    "lenet5": (LeNet5, {}, (28, 28, 1)),
    "convnet": (ConvNet, {}, (32, 32, 3)),
    "resnet18": (ResNet, {"stage_sizes": (2, 2, 2, 2), "width": 64}, (32, 32, 3)),
    "resnet20": (ResNet, {"stage_sizes": (3, 3, 3), "width": 16, "shortcut": "pad"}, (32, 32, 3)),
    "preact_resnet18": (PreActResNet, {"stage_sizes": (2, 2, 2, 2), "width": 64}, (32, 32, 3)),
    "vgg11": (VGG, {}, (32, 32, 3)),
    "mobilenetv2": (MobileNetV2, {}, (32, 32, 3)),
    "nin": (NetworkInNetwork, {}, (32, 32, 3)),
}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise ValueError(f"argument 'name' must be one of {sorted(MODELS)}, got {name!r}")
    return name.lower()


def get_model(name: str, num_classes: int = 10, **knobs) -> nn.Module:
    """The model ``name`` (see :data:`MODELS`) with ``num_classes`` outputs; ``knobs`` override the
    defaults of its class (e.g. ``get_model("resnet18", 5, width=16)`` for a narrow CPU ResNet)."""
    name = _check_name(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"argument 'num_classes' must be an int >= 1, got {num_classes!r}")
    cls, fixed, _ = MODELS[name]
    fields = set(cls.__dataclass_fields__) - {"parent", "name"}
    unknown = set(knobs) - fields
    if unknown:
        raise TypeError(f"get_model({name!r}): unknown knobs {sorted(unknown)}; {cls.__name__} takes {sorted(fields)}")
    return cls(num_classes=num_classes, **{**fixed, **knobs})


def default_input_shape(name: str) -> tuple[int, int, int]:
    """``(H, W, C)`` of the data set the model ``name`` was published for."""
    return MODELS[_check_name(name)][2]


def count_params(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of trainable parameters (the ``"params"`` collection; BatchNorm running statistics are
    not parameters, as in PyTorch's ``parameters()``), from shapes only (:func:`jax.eval_shape`)."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    shapes = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"]))
