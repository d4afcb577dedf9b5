"""The catalogue of named layers: every convolution of ResNet-50 v1.5, VGG-16 and AlexNet.

Names follow torchvision's module paths where they exist (``resnet50.conv1``,
``resnet50.layer3.0.conv2``, ``resnet50.layer2.0.downsample.0``, ``alexnet.features.3`` is
``alexnet.conv2``), VGG-16 uses the customary ``vgg16.conv3_2``.  The batch is a parameter.
ResNet-50 layers are listed in network order (conv1, conv2, conv3, then the projection of each
bottleneck), which is also the numbering of gemmini.md section 7.2.
"""

from __future__ import annotations

from .errors import ParconvError
from .spec import ConvSpec, spec_for_dtype

# name -> (in_channels, out_channels, input size, kernel, stride, padding)
_Shape = tuple[int, int, int, int, int, int]


def _resnet50() -> dict[str, _Shape]:
    shapes: dict[str, _Shape] = {"resnet50.conv1": (3, 64, 224, 7, 2, 3)}
    in_ch, size = 64, 56
    for stage, (planes, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
        for block in range(blocks):
            s = stride if block == 0 else 1
            prefix = f"resnet50.layer{stage}.{block}"
            shapes[f"{prefix}.conv1"] = (in_ch, planes, size, 1, 1, 0)
            shapes[f"{prefix}.conv2"] = (planes, planes, size, 3, s, 1)
            out_size = (size + 2 - 3) // s + 1
            shapes[f"{prefix}.conv3"] = (planes, 4 * planes, out_size, 1, 1, 0)
            if block == 0:
                shapes[f"{prefix}.downsample.0"] = (in_ch, 4 * planes, size, 1, s, 0)
            in_ch, size = 4 * planes, out_size
    return shapes


def _vgg16() -> dict[str, _Shape]:
    shapes: dict[str, _Shape] = {}
    in_ch, size = 3, 224
    for stage, (width, count) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)],
                                           start=1):
        for i in range(1, count + 1):
            shapes[f"vgg16.conv{stage}_{i}"] = (in_ch, width, size, 3, 1, 1)
            in_ch = width
        size //= 2
    return shapes


def _alexnet() -> dict[str, _Shape]:
    return {"alexnet.conv1": (3, 64, 224, 11, 4, 2),
            "alexnet.conv2": (64, 192, 27, 5, 1, 2),
            "alexnet.conv3": (192, 384, 13, 3, 1, 1),
            "alexnet.conv4": (384, 256, 13, 3, 1, 1),
            "alexnet.conv5": (256, 256, 13, 3, 1, 1)}


CATALOGUE: dict[str, _Shape] = {**_resnet50(), **_vgg16(), **_alexnet()}


def layer_names(prefix: str = "") -> list[str]:
    """Catalogue names that start with `prefix`, in network order."""
    return [name for name in CATALOGUE if name.startswith(prefix)]


def get_layer(name: str, batch: int = 1, dtype: str = "int8", bias: bool = False) -> ConvSpec:
    """The ConvSpec of a catalogue layer at the given batch and ``--dtype``.

    Raises
    ------
    ParconvError
        For an unknown name; the message suggests close names.
    """
    if name not in CATALOGUE:
        import difflib
        close = difflib.get_close_matches(name, list(CATALOGUE), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ParconvError(f"unknown layer {name!r}{hint} (list them with "
                           f"'python -m parconv.plan --list-layers')")
    c, k, size, kernel, stride, pad = CATALOGUE[name]
    return spec_for_dtype(dtype, batch=batch, in_channels=c, out_channels=k,
                          in_size=(size, size), kernel_size=(kernel, kernel),
                          stride=(stride, stride), padding=(pad, pad), bias=bias, name=name)
