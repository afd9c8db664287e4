"""train stage: fit the float model with Keras 3 on the JAX backend (run in a JAX process)."""

import time

from pipeline.data import preprocess
from pipeline.data.sampling import stratified_subset
from pipeline.data.splits import load_dataset, split_arrays
from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import atomic_save_model
from pipeline.engine.stage import Stage
from pipeline.model import usermodel
from pipeline.release import tasks

STAGE = Stage(
    "train", __name__, config=("build.seed", "train", "preprocess", "task.kind"), inputs=("dataset.npz",),
    outputs=("float.keras",),
    backend="jax", toolchain=usermodel.JAX_TOOLCHAIN, external=lambda config: _external(config),
)


def _external(config):
    """The model files, and the number of JAX processes that train together: a model trained on two
    hosts is never a cache hit for one trained on one (the same config, other bytes)."""
    import os

    files = usermodel.model_files(config.train, True)
    processes = os.environ.get("JAX_NUM_PROCESSES", "1") if os.environ.get("JAX_COORDINATOR_ADDRESS") else "1"
    return {**files, "jax_processes": processes} if processes != "1" else files


def _join_hosts():
    """Multi-host training: every host runs the same build with its own JAX_PROCESS_ID; JAX's
    coordinator joins them, and keras.distribution.DataParallel spans all their devices. Must run
    before JAX touches a device."""
    import os

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        import jax

        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )


def _distribution(cfg):
    """Data-parallel training over every local JAX device (keras.distribution), when asked."""
    import jax
    import keras

    devices = jax.devices()
    if cfg.data_parallel:
        if cfg.batch_size % len(devices):
            raise InputError(f"train.data_parallel splits each batch over {len(devices)} devices, so train.batch_size "
                             f"must be a multiple of {len(devices)}; received {cfg.batch_size}.")
        distribution = keras.distribution.DataParallel(devices=devices)
        # several processes: each feeds its own part of every batch (_process_part); Keras's own sharding
        # needs a tf.data.Dataset
        distribution.auto_shard_dataset = jax.process_count() == 1
        keras.distribution.set_distribution(distribution)
        print(f"data-parallel training over {len(devices)} devices: {[str(d) for d in devices]}")
        return {"count": len(devices), "platform": devices[0].platform, "data_parallel": True,
                "processes": jax.process_count()}
    return {"count": 1, "platform": devices[0].platform, "data_parallel": False, "processes": jax.process_count()}


def _process_part(x_train, y_train, x_val, y_val, cfg, devices):
    """This process's part of the data when JAX processes train together: every k-th sample from the
    process's index, and batch_size / k of each global batch (JAX assembles the global batch from the
    processes' parts, so the gradient and the metrics are over all of them)."""
    import jax

    k, i = jax.process_count(), jax.process_index()
    if cfg.batch_size % k:
        raise InputError(f"training in {k} processes splits each batch over them, so train.batch_size must be a "
                         f"multiple of {k}; received {cfg.batch_size}.")
    devices["process_index"] = i
    return x_train[i::k], y_train[i::k], x_val[i::k], y_val[i::k], cfg.batch_size // k


def manifest(record, config):
    """The manifest's "train" section: how the float model was trained, and where (CPU, XLA flags)."""
    section = {k: record.get(k) for k in (
        "recipe", "params", "seconds", "trainable_params", "total_params", "trainable_fraction", "finetune",
        "pretrained", "lora_merge", "devices", "softmax_removed", "input_convention", "history", "initial",
        "kept_epoch", "kept_by", "kept_val_accuracy", "cpu", "xla_flags")}
    return section | ({"kept_val_loss": record["kept_val_loss"]} if "kept_val_loss" in record else {})


def publish(records, config, build_dir):
    from pipeline.release.manifest import artifact

    return {"artifacts": {"float_keras": artifact(build_dir, "float.keras")}}


def run(stage_cfg, inputs, out_dir, ctx):
    _join_hosts()
    from pipeline.model import fitting, preflight, transfer

    cfg, pp, seed, progress = stage_cfg.train, stage_cfg.preprocess, stage_cfg.build.seed, ctx.progress
    dataset_path = inputs["dataset.npz"]

    fitting.set_seed(seed)
    data = load_dataset(dataset_path)
    x_train, y_train = split_arrays(data, "train", pp)
    x_val, y_val = split_arrays(data, "val", pp)
    task = tasks.get(stage_cfg.task.kind)
    reconstruct = task is not None  # (the one other task: an autoencoder, fitted to reconstruct)
    if task:  # e.g. an autoencoder learns to reconstruct the normal windows only
        (x_train, y_train), (x_val, y_val) = task.fit_arrays(x_train, y_train), task.fit_arrays(x_val, y_val)
    num_classes = (task.model_outputs(x_train.shape[1:], data["class_names"]) if task
                   else len(data["class_names"]))
    devices = _distribution(cfg)  # before any variable exists, so every variable is laid out by it
    batch_size = cfg.batch_size
    if devices["count"] > 1:
        # every batch, the last one too, is split evenly over the devices: drop at most count-1 samples
        keep_train = len(x_train) - len(x_train) % devices["count"]
        keep_val = len(x_val) - len(x_val) % devices["count"]
        devices["dropped_samples"] = int(len(x_train) - keep_train + len(x_val) - keep_val)
        x_train, y_train, x_val, y_val = x_train[:keep_train], y_train[:keep_train], x_val[:keep_val], y_val[:keep_val]
    if devices["data_parallel"] and devices["processes"] > 1:
        x_train, y_train, x_val, y_val, batch_size = _process_part(x_train, y_train, x_val, y_val, cfg, devices)
    model, softmax_removed = usermodel.build_model(cfg, x_train.shape[1:], num_classes)
    if softmax_removed:
        print(f"removed the final softmax ({softmax_removed}): the model and its artifacts output logits")
    trained = usermodel.kind(cfg.recipe) == "keras_file"
    if usermodel.kind(cfg.recipe) != "builtin":
        preflight.require_portable(model, cfg.recipe)  # (train.epochs = 0 is refused by the config for recipes)
    convention = None
    if trained and not preprocess.is_tensor(data["x"], pp) and not reconstruct:
        # a trained model fed the wrong input convention scores near chance: say which one fits
        split = "val" if len(y_val) else "train"
        idx = data[split][stratified_subset(data["y"][data[split]], 2000, seed)]
        convention = usermodel.check_input_convention(
            model, data["x"][idx], data["y"][idx], pp, x_train.shape[-1], cfg.recipe)
        convention["split"] = split
    pretrained = transfer.load_pretrained(model, cfg.weights) if cfg.weights else None
    if cfg.finetune != "full" and not (pretrained or trained):
        raise InputError(f"train.finetune = {cfg.finetune!r} adapts a pretrained model; set train.weights to a "
                         "local weights file (or train.recipe to a trained .keras file), or use finetune = 'full'.")
    transfer.apply_mode(model, cfg.finetune, cfg.unfreeze_top, cfg.lora_rank)
    counts = transfer.param_counts(model)
    print(f"trainable parameters: {counts['trainable_params']:,} of {counts['total_params']:,} "
          f"({100 * counts['trainable_fraction']:.2f}%, finetune = {cfg.finetune})")
    started = time.perf_counter()
    # A trained model is fine-tuned with its own state as a candidate: the best val epoch is kept, so
    # the default epochs and learning rate can never leave it worse than it came (on val).
    fitted = fitting.fit(model, (x_train, y_train), (x_val, y_val), cfg.epochs, batch_size, cfg.learning_rate,
                         progress, "train", keep_best=trained, initial_candidate=trained, reconstruct=reconstruct)
    seconds = time.perf_counter() - started
    lora_merge = None
    if cfg.finetune == "lora":
        # export needs a plain graph: fold every adapter into its kernel, and prove nothing changed
        model, diff = transfer.merge_lora(model, x_val[:64] if len(x_val) else x_train[:64])
        lora_merge = {"max_abs_output_diff": diff}
        if diff > 1e-5:
            raise RuntimeError(f"merging LoRA adapters changed the outputs by {diff:.3g} (> 1e-5)")
    atomic_save_model(model, out_dir / "float.keras")
    return {
        "recipe": cfg.recipe,
        "params": int(model.count_params()),
        **counts,
        "finetune": cfg.finetune,
        "pretrained": pretrained,
        "lora_merge": lora_merge,
        "devices": devices,
        "epochs": cfg.epochs,
        "seconds": round(seconds, 2),
        "softmax_removed": softmax_removed,
        "input_convention": convention,
        # the first epoch includes JAX's tracing and XLA compilation of the train/eval steps
        **fitted,
    }
