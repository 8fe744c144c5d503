"""The classifier: backbone + head, two-phase fine-tuning, and its freeze boundary.

Two named steps, as in the keras-io fine-tuning guide: `build_classifier` (backbone frozen)
then `unfreeze(model, n_layers, learning_rate)` (top layers trainable, BatchNormalization kept
frozen so it runs in inference mode). `split_at_boundary` cuts the model where the frozen part
ends, so the frozen part's output can be computed once and cached.
"""

import json
from pathlib import Path

import numpy as np

from agerange.backbones import backbone_layer_names, get_backbone, resolve_weights
from agerange.labels import AGE_BINS, GROUP_NAMES

# What a stage writes in place of a model it was told not to train (the distil stage with
# `distil.enabled` false): a reader takes it as "no model", where an empty folder is an error.
SKIPPED = "skipped.json"


def skipped_reason(folder: Path) -> str | None:
    """Why no model was trained into `folder` (its SKIPPED note), or None when one was."""
    note = Path(folder) / SKIPPED
    if (Path(folder) / "model.keras").is_file() or not note.is_file():
        return None
    try:
        return str(json.loads(note.read_text())["reason"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{note}: unreadable note of a skipped model ({error!r})") from None


# head -> (output width, output layer name): ten age groups, or one bin per year of age
HEADS = {"groups": (len(GROUP_NAMES), "age_group"), "ages": (AGE_BINS, "age_distribution")}


def build_classifier(
    backbone: str,
    image_size: int,
    weights_dir: Path,
    dropout: float,
    weights_sha256: str | None = None,
    head: str = "groups",
):
    """A Keras model from raw RGB pixels (0-255, image_size square) to age-group probabilities
    (`head` "groups") or a distribution over single years of age (`head` "ages", AGE_BINS wide).

    The backbone starts frozen (except `small_cnn`, which has no pretrained weights).
    """
    if head not in HEADS:
        raise ValueError(f"{head}: unknown head (known: {', '.join(HEADS)})")
    import keras

    entry = get_backbone(backbone)
    weights = resolve_weights(entry, weights_dir, weights_sha256)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    base = entry.build(inputs, weights)
    base.trainable = weights is None
    x = keras.layers.GlobalAveragePooling2D(name="features")(base.output)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output even under mixed precision, for a stable softmax and loss
    units, name = HEADS[head]
    outputs = keras.layers.Dense(units, activation="softmax", dtype="float32", name=name)(x)
    return keras.Model(inputs, outputs, name=f"agerange_{backbone}")


def unfreeze(model, backbone: str, n_layers: int) -> list[str]:
    """Make the top `n_layers` backbone layers trainable, keeping BatchNormalization frozen.

    Returns:
        The names of the layers made trainable (BatchNormalization layers are counted but stay frozen).
    """
    import keras

    names = backbone_layer_names(model, backbone)
    if not 0 <= n_layers <= len(names):
        raise ValueError(f"cannot unfreeze {n_layers} layers: backbone '{backbone}' has {len(names)}")
    top = set(names[len(names) - n_layers :]) if n_layers else set()
    made_trainable = []
    for name in names:
        layer = model.get_layer(name)
        trainable = name in top and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        if trainable:
            made_trainable.append(name)
    return made_trainable


def first_trainable_index(model) -> int:
    """Index in `model.layers` of the first layer with trainable weights."""
    for index, layer in enumerate(model.layers):
        if layer.trainable and layer.trainable_weights:
            return index
    return len(model.layers)


def boundary_layer(model, before_index: int, lookback: int = 12) -> str:
    """Where to cut the model so the part below can be computed once and cached.

    A valid cut is a layer whose output alone feeds everything after it (no skip connection
    jumps over it), so `top(bottom(x)) == model(x)`. Among the valid cuts at most `lookback`
    layers below `before_index` (the first trained layer), the one with the smallest output
    wins: in MobileNetV2 a block's narrow output is several times smaller than the expanded
    tensor inside the next block, and the few frozen layers in between cost little per epoch.
    """
    producers = _inbound_layer_names(model)
    order = {layer.name: index for index, layer in enumerate(model.layers)}
    candidates = []
    for index in range(min(before_index, len(model.layers) - 1), 0, -1):
        if all(
            order[source] >= index - 1 for layer in model.layers[index:] for source in producers[layer.name]
        ):
            candidates.append(model.layers[index - 1])
            if before_index - index >= lookback:
                break
    if not candidates:
        return model.layers[0].name
    sizes = [int(np.prod(layer.output.shape[1:])) for layer in candidates]
    return candidates[int(np.argmin(sizes))].name  # first (highest) cut among equal sizes


def split_at_boundary(model, layer_name: str):
    """Two models sharing `model`'s layers: input -> `layer_name`'s output, and that output -> prediction."""
    import keras

    boundary = model.get_layer(layer_name).output
    bottom = keras.Model(model.input, boundary, name="frozen_part")
    top = keras.Model(boundary, model.output, name="trained_part")
    return bottom, top


def _inbound_layer_names(model) -> dict[str, set[str]]:
    """For each layer, the names of the layers whose outputs it consumes (from the model config)."""

    def histories(node) -> set[str]:
        if isinstance(node, dict):
            if "keras_history" in node.get("config", {}):
                return {node["config"]["keras_history"][0]}
            return set().union(*(histories(value) for value in node.values())) if node else set()
        if isinstance(node, list | tuple):
            return set().union(*(histories(value) for value in node)) if node else set()
        return set()

    return {
        layer["name"]: histories(layer.get("inbound_nodes", [])) for layer in model.get_config()["layers"]
    }


def ensemble_classifier(members: list, shared_until: str | None = None):
    """One Keras model answering the mean of its members' probabilities (a deep ensemble).

    The first member's layers are copied flat into the ensemble (names kept), so it saves,
    exports to TFLite and shows its feature maps like a single classifier, and its `features`
    layer is the ensemble's embedding; the other members are nested models `member_1`, ...

    Args:
        members: classifiers of the same architecture.
        shared_until: a layer up to which every member has the same (frozen, pretrained) weights,
            such as the training's freeze boundary: that part runs once, for all members.
    """
    import keras

    if len(members) == 1:
        return members[0]
    inputs = keras.Input(members[0].input.shape[1:], name="pixels")
    first = _copy(members[0], inputs)
    outputs = [first.output]
    for index, member in enumerate(members[1:], start=1):
        if shared_until is None:
            outputs.append(keras.Model(member.input, member.output, name=f"member_{index}")(inputs))
            continue
        for name in _layers_up_to(member, shared_until):
            theirs = members[0].get_layer(name).weights
            if not all(
                np.array_equal(a, b) for a, b in zip(member.get_layer(name).weights, theirs, strict=True)
            ):
                raise ValueError(f"ensemble member {index}: layer '{name}' differs, so it cannot be shared")
        boundary = member.get_layer(shared_until).output
        top = keras.Model(boundary, member.output, name=f"member_{index}")
        outputs.append(top(first.get_layer(shared_until).output))
    mean = keras.layers.Average(name="ensemble_mean", dtype="float32")(outputs)  # as each member's output
    return keras.Model(inputs, mean, name=f"{members[0].name}_ensemble")


def member_embeddings(model):
    """`model` cut below its output layers: a Keras model from pixels to every member's embedding
    (the `features` layer) side by side, (N, members x D), and the members' output layers (Dense +
    softmax) in the same order. For inference (dropout, between the two, is then the identity).

    The int8 export quantizes only this part and leaves the output layers to the host in float:
    an int8 softmax over AGE_BINS ages rounds each bin to 1/256, which wipes out the tails that
    range and interval answers sum.
    """
    import keras

    output_names = {name for _, name in HEADS.values()}
    embeddings = [model.get_layer("features").output]
    heads = [next(layer for layer in model.layers if layer.name in output_names)]
    for layer in model.layers:
        if not isinstance(layer, keras.Model):  # ensemble members after the first are nested
            continue
        inner = keras.Model(layer.inputs, layer.get_layer("features").output)
        # the tensor of `model`'s graph that feeds the member (the pixels, or the shared boundary)
        embeddings.append(inner(layer._inbound_nodes[0].input_tensors[0]))
        heads.append(next(inner_layer for inner_layer in layer.layers if inner_layer.name in output_names))
    joined = embeddings[0] if len(embeddings) == 1 else keras.layers.Concatenate()(embeddings)
    return keras.Model(model.inputs, joined, name=f"{model.name}_embeddings"), heads


def float32_copy(model):
    """`model` with the same weights and every layer computing in float32: a model trained under
    mixed precision exports to TFLite (which has no float16 convolutions) and predicts exactly."""
    import keras

    def as_float32(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=as_float32, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def _copy(model, inputs):
    """A copy of `model` (same layer names and weights) built on the tensor `inputs`."""
    import keras

    copy = keras.models.clone_model(model, input_tensors=inputs)
    copy.set_weights(model.get_weights())
    return copy


def _layers_up_to(model, layer_name: str) -> list[str]:
    """Names of the layers from the input up to and including `layer_name`, in model order."""
    names = [layer.name for layer in model.layers]
    return names[: names.index(layer_name) + 1]
