"""Where training runs: the GPU with mixed precision and XLA when there is one, the CPU otherwise."""


def configure_device(
    mixed_precision: str = "auto", deterministic: str = "auto", threads: int = 0
) -> dict[str, object]:
    """Use the GPU with mixed precision and XLA when there is one; the CPU's threads otherwise.

    `deterministic` turns on TensorFlow's deterministic ops (auto: on a GPU, where they are not by
    default); `threads` > 0 fixes the size of TensorFlow's thread pools. Called by entry points
    only (never on import), before TensorFlow runs anything. Returns what was chosen, for logging.
    """
    import keras
    import tensorflow as tf

    if threads > 0:  # must come before TensorFlow's runtime starts
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    use_mixed = bool(gpus) if mixed_precision == "auto" else mixed_precision == "on"
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    use_deterministic = bool(gpus) if deterministic == "auto" else deterministic == "on"
    if use_deterministic:
        tf.config.experimental.enable_op_determinism()
    return {
        "device": "gpu" if gpus else "cpu",
        "gpus": len(gpus),
        "mixed_precision": use_mixed,
        "xla": bool(gpus),
        "deterministic_ops": use_deterministic,
        "threads": threads or "all",
    }


def resolve_augment(setting: bool | str, device: dict[str, object]) -> bool:
    """`train.augment` for this device: `auto` augments online on a GPU and caches on a CPU."""
    return device["device"] == "gpu" if setting == "auto" else bool(setting)
