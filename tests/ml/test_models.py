import os
import pickle

import numpy as np
import pytest
from helpers import EXPECTED_TOP1

from sparkvision.ml.models import efficientnet_lite, registry
from sparkvision.ml.models.torch_legacy import LEGACY_MAGIC, UnsafeCheckpointError, load_legacy_state_dict
from sparkvision.ml.models.weights import resolve_weights

ORIGINALS = ["InceptionV3", "Xception", "ResNet50", "VGG16", "VGG19"]


def test_registry_has_originals_and_modern_models():
    for name in ORIGINALS + ["MobileNetV2", "EfficientNetB0", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]:
        assert registry.get(name).name == name
    assert registry.get("inceptionv3").name == "InceptionV3"
    assert registry.get("EfficientNetLite0").name == "efficientnet_lite0"
    with pytest.raises(KeyError, match="unknown model 'AlexNet'"):
        registry.get("AlexNet")


def test_sizes_and_preprocessing_come_from_the_registry():
    assert registry.get("InceptionV3").input_size == 299
    assert registry.get("ResNet50").input_size == 224
    x = np.full((1, 2, 2, 3), 255.0, dtype=np.float32)
    assert np.allclose(registry.get("InceptionV3").preprocess_fn()(x.copy()), 1.0)  # 'tf' mode
    caffe = registry.get("ResNet50").preprocess_fn()(np.array([[[[10.0, 20.0, 30.0]]]], dtype=np.float32))
    assert np.allclose(caffe, [[[[30 - 103.939, 20 - 116.779, 10 - 123.68]]]])  # RGB in, BGR-mean inside
    assert np.allclose(registry.get("efficientnet_lite0").preprocess_fn()(x), 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ORIGINALS + ["MobileNetV2", "EfficientNetB0"])
def test_keras_models_give_pooled_features_of_registered_width(name):
    spec = registry.get(name)
    model = spec.build(None)  # random weights: same graph, no download
    assert model.output_shape == (None, spec.feature_dim)


def test_lite_weights_load_without_torch_and_build():
    spec = registry.get("efficientnet_lite0")
    path = resolve_weights(spec)  # from the installed wheel, checksum verified
    sd = load_legacy_state_dict(str(path))
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    model = spec.build(str(path))
    assert model.output_shape == (None, 1280)
    assert "torch" not in __import__("sys").modules


def _legacy_file(path, payload):
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(payload)


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    _legacy_file(path, pickle.dumps(Evil(), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="refusing to load global"):
        load_legacy_state_dict(str(path))
    assert not (tmp_path / "pwned").exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps(123))
    with pytest.raises(ValueError, match="not a legacy PyTorch checkpoint"):
        load_legacy_state_dict(str(path))


def _imagenet_classes(photos):
    """ImageNet-1k names in Keras/torch index order (sorted WordNet ids), from darknet's lists."""
    wnids = (photos / "imagenet.labels.list").read_text().split()[:1000]
    names = (photos / "imagenet.shortnames.list").read_text().splitlines()[:1000]
    return [names[i] for i in sorted(range(1000), key=lambda i: wnids[i])]


# dogs are ImageNet classes 151-268; birds of prey: 21 kite, 22 bald eagle, 23 vulture


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_pretrained_lite_weights_recognise_photos(photos, name):
    from sparkvision.run import images as imglib

    spec = registry.get(name)
    model = efficientnet_lite.build(str(resolve_weights(spec)), spec.input_size, include_top=True)
    classes = _imagenet_classes(photos)
    for photo, allowed in EXPECTED_TOP1.items():
        pixels = imglib.decode_for_model((photos / photo).read_bytes(), spec.input_size, spec.crop_fraction)
        logits = model.predict(spec.preprocess_fn()(pixels[None].astype(np.float32)), verbose=0)[0]
        top = int(np.argmax(logits))
        assert top in allowed, f"{name} says {photo} is {classes[top]!r} (class {top})"
