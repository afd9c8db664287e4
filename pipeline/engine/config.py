"""The one typed build config: `edgebuild.toml` -> `BuildConfig`, one section per concern.

Every field has a type, a default and a one-line description (the `doc` metadata). Unknown keys
and wrong types are `InputError`s that name the key, what was received and the closest valid key.
The dataclasses are frozen (no field can be reassigned), but list values are plain lists: treat
them as read-only. A stage receives only the entries it declares (`pipeline.engine.stage`).
"""

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.engine.errors import InputError
from pipeline.engine.text import did_you_mean


def setting(default, doc, **checks):
    """A config key of a section: its default, its one-line description (`edgebuild config`) and its
    checks (min, max, choices, items: the item type of a list, name: a build or target name, recipe)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **checks})
    return field(default=default, metadata={"doc": doc, **checks})


@dataclass(frozen=True)
class BuildSection:
    name: str = setting("digits", "build name (letters, digits, '.', '_', '-'); outputs go to <out_dir>/<name>/",
                   name=True)
    seed: int = setting(0, "seed for the split, initialisation and shuffling", min=0, max=2**32 - 1)
    out_dir: str = setting("build", "directory that receives one folder per build")


@dataclass(frozen=True)
class DataConfig:
    source: str = setting("digits", "'digits' (scikit-learn, embedded), an image folder, or an .npz with x/y (and optional "
                     "split, class_names)")
    test_source: str = setting("", "your fixed held-out test set: an image folder or .npz (with a split array: its 'test' "
                          "rows), never split, trained or calibrated on; '' = a test split of data.source")
    allow_overlap: bool = setting(False, "accept images that occur both in the test set and in train/val/calibration "
                             "(recorded in the manifest)")
    image_size: int = setting(32, "images are resized to image_size x image_size", min=8, max=512)
    channels: int = setting(1, "1 (grayscale) or 3 (RGB)", choices=(1, 3))
    mixed_sizes: str = setting("resize", "'resize' images of other sizes, or 'refuse' them", choices=("resize", "refuse"))
    resize: str = setting("pillow", "how images are decoded and resized: 'pillow' (Pillow, bilinear antialiased when "
                     "shrinking) or 'keras' (TensorFlow's decoder and tf.image.resize bilinear, as "
                     "keras.utils.image_dataset_from_directory loads them, so accuracy matches a Keras pipeline)",
                     choices=("pillow", "keras"))
    val_fraction: float = setting(0.15, "fraction of samples for validation", min=0.0, max=0.5)
    test_fraction: float = setting(0.2, "fraction of samples for the test split", min=0.05, max=0.5)
    max_samples: int = setting(0, "use at most this many samples, stratified (0 = all)", min=0, max=10**9)
    calibration_file: str = setting("calibration/digits-v1.json", "versioned calibration set (created if missing)")
    calibration_samples: int = setting(200, "calibration samples, stratified by class, from the train split", min=10, max=1_000_000)


@dataclass(frozen=True)
class PreprocessConfig:
    pixel_range: list = setting([0.0, 1.0], "[lo, hi]: a uint8 pixel p becomes lo + p * (hi - lo) / 255, the model's input "
                           "convention ([0, 1], [0, 255], [-1, 1], ...)")
    mean: list = setting([], "then subtract mean[c] per channel ([] = none; one value or one per channel)")
    std: list = setting([], "then divide by std[c] per channel ([] = none; one value or one per channel)")
    form: str = setting("auto", "what x holds: 'pixels' (images: the pixel formula above), 'tensor' (features, of any "
                        "rank: x * scale + offset, no pixel conversion) or 'auto' (an .npz whose x is not uint8 "
                        "pixels, i.e. integer features, floats outside 0..255 or not (N, H, W[, 1|3]): 'tensor'; else "
                        "'pixels')", choices=("auto", "pixels", "tensor"))
    scale: list = setting([], "tensor form: multiply each feature by scale ([] = 1; one value, or one per channel: the "
                          "last axis)")
    offset: list = setting([], "tensor form: then add offset ([] = 0; one value, or one per channel: the last axis)")


@dataclass(frozen=True)
class TaskConfig:
    kind: str = setting("classification", "'classification' (y: class ids; top-1, per-class accuracy) or 'anomaly' "
                        "(y: 0 normal, 1 anomaly; the model reconstructs its input; a window's score is its mean squared "
                        "reconstruction error, a clip's the mean of its windows; judged by ROC AUC over clips)",
                        choices=("classification", "anomaly"))
    top_k: int = setting(1, "classification: also measure top-k accuracy (the true class among the k highest "
                         "scores, ties included, as tf.math.in_top_k) of every model and target; 1 = top-1 only",
                         min=1, max=1000)


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = setting("small_cnn", "small_cnn (conv/BN/ReLU), ds_cnn (depthwise-separable), mobilenet_v3_small, "
                     "efficientnet_v2_b0, ds_cnn_kws (keyword spotting on 49x10 MFCCs), autoencoder (dense, for "
                     "task.kind = 'anomaly'), vit_tiny (a vision transformer of about 27k parameters), 'module.path:function' (your (input_shape, num_classes) -> keras.Model; "
                     "for an anomaly task num_classes is the input's shape, which the model reconstructs), "
                     "imported from the working directory) or a trained .keras file (fine-tuned for "
                     "train.epochs; 0 = as is)", recipe=True)
    width: int = setting(16, "filters in the first block", min=1, max=4096)
    blocks: int = setting(3, "conv blocks", min=1, max=6)
    weights: str = setting("", "pretrained weights, a local .weights.h5 or .keras file, loaded by layer name into every "
                          "layer but the 'logits' head ('' = random init; nothing is downloaded)")
    finetune: str = setting("full", "what trains: 'full', 'freeze' (head only, plus unfreeze_top layers) or 'lora' "
                               "(low-rank adapters on the backbone's Conv2D/Dense, merged before QAT)",
                       choices=("full", "freeze", "lora"))
    unfreeze_top: int = setting(0, "with finetune = 'freeze': also train the last N weighted backbone layers", min=0, max=10_000)
    lora_rank: int = setting(4, "rank of the LoRA adapters", min=1, max=4096)
    data_parallel: bool = setting(False, "keras.distribution.DataParallel over all local JAX devices (and hosts, see README)")
    epochs: int = setting(10, "training epochs (0 only for a trained .keras recipe or train.weights)", min=0, max=10_000)
    batch_size: int = setting(64, "batch size", min=1, max=1_000_000)
    learning_rate: float = setting(3e-3, "Adam learning rate", min=0.0, max=10.0)


@dataclass(frozen=True)
class QatConfig:
    enabled: bool = setting(True, "quantization-aware fine-tuning; false (or qat.epochs = 0): post-training quantization, "
                            "the float model calibrated and converted with no QAT rewrite")
    epochs: int = setting(3, "quantization-aware fine-tuning epochs (the epoch with the best val accuracy is kept; 0: "
                          "post-training quantization)", min=0, max=10_000)
    gelu: str = setting("sigmoid", "how GELU is quantized: 'sigmoid' (x * sigmoid(1.702 x): MUL and LOGISTIC, which every "
                        "int8 runtime has, TFLM and Vela included; QAT fine-tunes to it) or 'native' (LiteRT's int8 GELU "
                        "op, one op, which TFLM and Vela lack)", choices=("sigmoid", "native"))
    batch_size: int = setting(64, "batch size", min=1, max=1_000_000)
    learning_rate: float = setting(1e-5, "Adam learning rate (peak of a cosine decay); low, so a converged or pretrained "
                             "model is adjusted to int8, not retrained", min=0.0, max=10.0)
    transformer_learning_rate: float = setting(3e-4, "the learning rate instead, for a model with LayerNormalization, "
                                               "MultiHeadAttention or EinsumDense: their int8 variance and attention "
                                               "probabilities start it further from float, so QAT must really "
                                               "fine-tune it", min=0.0, max=10.0)
    transformer_epochs: int = setting(10, "the epochs instead, for a model with LayerNormalization, MultiHeadAttention "
                                      "or EinsumDense (0 = qat.epochs): their rewrite starts further from float, and an "
                                      "epoch of a small ViT costs about a second", min=0, max=10_000)
    distill: float = setting(0.0, "distillation from the float model during QAT, a classifier's: the QAT loss is "
                             "(1 - w) x the labels' cross-entropy + w x T^2 x KL(float || QAT model) of the logits "
                             "softened at T = qat.distill_temperature; this is w (0 = the labels only)", min=0.0, max=1.0)
    distill_temperature: float = setting(2.0, "the softmax temperature of qat.distill", min=0.1, max=100.0)
    max_val_drop: float = setting(0.05, "fail the stage (exit 3) if QAT's best val accuracy is more than this below the "
                             "float model's", min=0.0, max=1.0)
    ema_momentum: float = setting(0.99, "momentum of the activation-range moving average", min=0.0, max=1.0)
    init_samples: int = setting(256, "training samples that initialise the activation ranges", min=1, max=1_000_000)

    @property
    def post_training(self):
        """True when the int8 model is the float model calibrated and converted (no QAT stage)."""
        return post_training(self)


def post_training(qat):
    """Whether a [qat] section (or a stage's selection of its enabled and epochs) means post-training
    quantization: the float model calibrated and converted, no QAT rewrite."""
    return not qat.enabled or qat.epochs == 0


@dataclass(frozen=True)
class ExportConfig:
    formats: list = setting(["tflite", "onnx"], "the formats to export: 'tflite' (always: every target and the int8 "
                            "ONNX are made from the int8 .tflite) and 'onnx' (the float and int8 ONNX; a conversion "
                            "that fails fails the gate's 'ONNX export' check and keeps the TFLite results)",
                            items=str, choices=("tflite", "onnx"))
    onnx_opset: int = setting(17, "ONNX opset for tf2onnx", min=9, max=30)
    activations: str = setting("int8", "the quantized model's activations: 'int8' (full integer) or 'int16' (LiteRT's "
                               "16x8 mode: 16-bit activations, 8-bit weights, int16 input and output; post-training, "
                               "from the float model and the calibration set, so it needs qat.enabled = false, and "
                               "export.formats = [\"tflite\"]: tf2onnx has no 16x8 form)", choices=("int8", "int16"))
    allowed_float_ops: list = setting([], "op names allowed to stay float in the int8 model (recorded in the manifest)",
                                 items=str)


@dataclass(frozen=True)
class ValidateConfig:
    targets: list = setting(["rpi4-bookworm-tflite", "rpi5-litert", "cortex-m-tflm", "ethos-u55-128"],
                       "targets (targets/<name>.toml) to validate on: emulated Linux boards, microcontrollers (TFLM), "
                       "NPUs (Vela)", items=str, name=True)
    sample: int = setting(0, "validate at most this many test samples on emulated targets, stratified (0 = all)", min=0, max=10**9)
    shards: int = setting(2, "parallel emulated interpreter processes", min=1, max=64)
    kernels: str = setting("", "the kernels of every Linux board with a TFLite runtime, when its device build differs from "
                      "its target file: 'xnnpack', 'builtin' or 'reference' ('' = each target file's own; others keep "
                      "theirs); its twin runs the same", choices=("", "xnnpack", "builtin", "reference"))
    isa_samples: int = setting(64, "test samples each Linux board with a TFLite runtime and its x86 twin also run on the "
                          "runtime's reference kernels: the ISA check, held bit-exact (0 = off)", min=0, max=100_000)
    executor: str = setting("qemu", "how the emulated targets run: 'qemu' (user-mode qemu on the target's root filesystem, "
                       "the fastest) or 'container' (the target's OCI image under podman: edgebuild target image)",
                       choices=("qemu", "container"))
    model: str = setting("", "a .tflite built elsewhere to validate on data.test_source instead of building one "
                    "(set by `edgebuild validate MODEL --data SOURCE`; '' = build)")
    float_model: str = setting("", "the float Keras model (.keras) a validated .tflite was made from: the per-layer error "
                          "report compares each int8 tensor with its activations (set by `edgebuild validate MODEL "
                          "--float FLOAT.keras`; '' = no per-layer report)")
    boards: list = setting([], "real boards (ssh host names or ~/.ssh/config aliases) that run validate.board_target over "
                      "SSH instead of emulation; several: the test set is split over them, and a part whose board "
                      "drops runs again on another", items=str)
    board_target: str = setting("", "the Linux target that validate.boards run ('' = the one emulated Linux target of "
                           "validate.targets)")
    ssh_config: str = setting("", "the ssh client config file for validate.boards (ssh -F; '' = your own ~/.ssh/config)")
    board_python: str = setting("python3", "the Python on the boards that runs the validator, with the target's pinned "
                           "runtime (a command on the board's PATH, or an absolute path such as a virtual environment's)")


@dataclass(frozen=True)
class GateConfig:
    min_int8_accuracy: float = setting(0.0, "minimum int8 accuracy, host and every target (0 = no absolute minimum: "
                                  "set your task's own)", min=0.0, max=1.0)
    max_int8_drop: float = setting(0.02, "maximum int8 accuracy drop vs float (fraction)", min=0.0, max=1.0)
    max_baseline_drop: float = setting(0.01, "maximum int8 accuracy drop vs the baseline", min=0.0, max=1.0)
    max_class_drop: float = setting(0.05, "maximum accuracy drop of any single class, vs float and vs baseline", min=0.0, max=1.0)
    class_drop_samples: int = setting(2, "a class drop of at most this many test samples plus sqrt(the class's errors "
                                 "before) is noise and never fails", min=0, max=10**9)
    max_flip_rate: float = setting(0.02, "maximum fraction of test samples that regress (right in float -> wrong in "
                              "int8, right in the baseline -> wrong now; at least, see flip_error_ratio)",
                              min=0.0, max=1.0)
    flip_error_ratio: float = setting(0.3, "the flip budget is at least this times the reference model's error rate "
                                 "(a 57%-accurate model flips more than a 99% one)", min=0.0, max=100.0)
    min_target_agreement: float = setting(0.99, "minimum host/target top-1 agreement", min=0.0, max=1.0)
    min_onnx_agreement: float = setting(0.99, "minimum top-1 agreement of the int8 ONNX with the int8 .tflite on the host",
                                   min=0.0, max=1.0)
    max_int8_bytes: int = setting(1_000_000, "maximum int8 .tflite size in bytes", min=1, max=2**40)
    sram_bytes: int = setting(0, "RAM budget of every target, overriding its file's [budget] (0 = each target's own)",
                         min=0, max=2**40)
    flash_bytes: int = setting(0, "flash budget of every target, overriding its file's [budget] (0 = each target's own)",
                          min=0, max=2**40)
    max_macs: int = setting(0, "MACs per inference on every target, overriding its file's [budget] (0 = each target's own)",
                       min=0, max=10**15)
    max_cpu_fallback_ops: int = setting(-1, "NPU targets: operators Vela may leave to the CPU, overriding the target's "
                                   "[budget] (-1 = each target's own)", min=-1, max=10**6)
    max_inference_ms: float = setting(0.0, "NPU targets: Vela's estimated ms per inference, overriding the target's "
                                 "[budget] (0 = each target's own)", min=0.0, max=1e7)
    min_auc: float = setting(0.0, "anomaly tasks: minimum ROC AUC, host and every target (0 = no absolute minimum)",
                             min=0.0, max=1.0)
    max_auc_drop: float = setting(0.02, "anomaly tasks: maximum int8 ROC AUC drop vs float and vs the baseline", min=0.0,
                                  max=1.0)
    max_target_auc_diff: float = setting(0.01, "anomaly tasks: maximum |AUC difference| between a target and the host",
                                         min=0.0, max=1.0)
    min_score_correlation: float = setting(0.99, "anomaly tasks: minimum correlation of a target's anomaly scores "
                                           "with the host's run of the same model file (the int8 .tflite, or the int8 "
                                           "ONNX for an ONNX target), and of the int8 ONNX's with the int8 .tflite",
                                           min=-1.0, max=1.0)
    max_latency_ms: float = setting(0.0, "Linux boards validated over SSH (validate.boards): p99 ms per image on the "
                               "board, overriding the target's [budget] (0 = each target's own)", min=0.0, max=1e7)


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = setting(True, "reuse stage outputs whose inputs and config are unchanged")
    dir: str = setting("", "cache directory ('' = $EDGEBUILD_HOME, else ~/.cache/edgebuild; $EDGEBUILD_CACHE overrides both)")
    remote: str = setting("", "remote cache shared by runners: s3://bucket/prefix or file:///shared/dir (any fsspec URL; "
                     "credentials from the store's own chain, never in the URL); '' = none")


@dataclass(frozen=True)
class BuildConfig:
    build: BuildSection = field(default_factory=BuildSection)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    declared: dict = field(default_factory=dict, repr=False)  # {name: section} of the sections stages declare

    def __getattr__(self, name):  # only reached for names that are not fields: a stage-declared section
        declared = self.__dict__.get("declared") or {}
        if name in declared:
            return declared[name]
        raise AttributeError(f"BuildConfig has no section {name!r}")

    def section(self, name):
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self):
        fixed = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "declared"}
        return fixed | {name: dataclasses.asdict(value) for name, value in self.declared.items()}

    def sha256(self):
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    @property
    def build_dir(self):
        return Path(self.build.out_dir) / self.build.name


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


BUILTIN = ("small_cnn", "ds_cnn", "mobilenet_v3_small", "efficientnet_v2_b0", "ds_cnn_kws", "autoencoder", "vit_tiny")


def recipe_kind(recipe):
    """'builtin', 'keras_file' or 'function': the form of a train.recipe string (None: none of them)."""
    if recipe in BUILTIN:
        return "builtin"
    if recipe.endswith(".weights.h5"):
        return None
    if recipe.endswith((".keras", ".h5")):
        return "keras_file"
    if ":" in recipe:
        return "function"
    return None


def check_recipe(recipe):
    """Raise a one-line InputError for a recipe string that is none of the three forms."""
    if recipe_kind(recipe) is None:
        hint = did_you_mean(recipe, BUILTIN)
        if recipe.endswith(".weights.h5"):
            hint = " A .weights.h5 file holds weights only: set it as train.weights with a recipe that builds the model."
        raise InputError(
            f"train.recipe must be a built-in recipe ({', '.join(BUILTIN)}), 'module.path:function' or a "
            f"trained model file (.keras, or a Keras 2 full-model .h5); received {recipe!r}.{hint}"
        )


def _numbers(name, value):
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) and abs(v) <= 1e6 for v in value):
        raise InputError(f"config key 'preprocess.{name}' must be a list of finite numbers (at most 1e6 in size); "
                         f"received {value!r}."[:300])
    return [float(v) for v in value]


def check_preprocess(cfg, channels):
    """Refuse a preprocessing config that cannot describe an input of `channels` channels."""
    rng = _numbers("pixel_range", cfg.pixel_range)
    if len(rng) != 2 or not rng[0] < rng[1]:
        raise InputError(f"config key 'preprocess.pixel_range' must be [lo, hi] with lo < hi (what pixels 0 and 255 "
                         f"become); received {cfg.pixel_range!r}. Example: [0, 255] or [-1, 1].")
    for name in ("mean", "std"):
        values = _numbers(name, getattr(cfg, name))
        if len(values) not in (0, 1, channels):
            raise InputError(f"config key 'preprocess.{name}' needs one value or one per channel ({channels}, "
                             f"data.channels); received {len(values)}: {values}.")
    if any(v <= 0 for v in _numbers("std", cfg.std)):
        raise InputError(f"config key 'preprocess.std' must be positive; received {cfg.std!r}.")
    if any(v == 0 for v in _numbers("scale", cfg.scale)):
        raise InputError(f"config key 'preprocess.scale' must not be 0 (every feature would become the offset); "
                         f"received {cfg.scale!r}. Use a non-zero factor (1 = as they are).")
    _numbers("offset", cfg.offset)


SECTIONS = {f.name: f.type for f in dataclasses.fields(BuildConfig) if f.name != "declared"}  # and the declared ones
BUILT_IN = frozenset(SECTIONS)


def declare_section(name, cls, owner):
    """A stage module's own config section (`pipeline.stages` declares each when it is imported): it is
    read from edgebuild.toml and --set, checked and described like a built-in one."""
    if name in BUILT_IN or SECTIONS.get(name, cls) is not cls or hasattr(BuildConfig, name):
        raise InputError(f"{owner} declares the config section [{name}], which another part of edgebuild already "
                         "owns. Give the stage module another name.")
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise InputError(f"{owner} declares CONFIG = {cls!r:.80}; it must be a frozen dataclass whose keys are made "
                         "with pipeline.engine.config.setting(default, 'what it does').")
    for f in dataclasses.fields(cls):
        if "doc" not in f.metadata or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
            raise InputError(f"{owner}'s config key '{name}.{f.name}' has no default and description. Declare it "
                             "with pipeline.engine.config.setting(default, 'what it does').")
    SECTIONS[name] = cls


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(value, where):
    """Build and target names are names, never paths: letters, digits, '.', '_' and '-'."""
    if not NAME.fullmatch(value):
        raise InputError(
            f"{where} must be a name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(never a path); received {value[:80]!r}. Use for example 'digits-v2'."
        )


def _check_value(where, f, value):
    expected = type(f.default) if f.default is not dataclasses.MISSING else f.default_factory().__class__
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise InputError(
            f"config key '{where}' must be of type {expected.__name__}; received {value!r} "
            f"({type(value).__name__}). Fix it in edgebuild.toml or the --set flag."
        )
    meta = f.metadata
    if "items" in meta:
        wrong = [v for v in value if not isinstance(v, meta["items"])]
        if wrong:
            raise InputError(f"config key '{where}' must be a list of {meta['items'].__name__}; received "
                             f"{wrong[0]!r} ({type(wrong[0]).__name__}) in {value!r}."[:300])
    if meta.get("name"):
        for v in value if isinstance(value, list) else [value]:
            check_name(v, where)
    if "choices" in meta and isinstance(value, list):  # a list's items are each one of the choices
        wrong = [v for v in value if v not in meta["choices"]]
        if wrong or len(set(value)) != len(value):
            raise InputError(f"config key '{where}' is a list of distinct items from {', '.join(map(repr, meta['choices']))}; "
                             f"received {value!r}. Keep each of those at most once."[:300])
    elif "choices" in meta and value not in meta["choices"]:
        raise InputError(
            f"config key '{where}' must be one of {', '.join(map(repr, meta['choices']))}; "
            f"received {value!r}."
        )
    if meta.get("recipe"):
        check_recipe(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"config key '{where}' must be a finite number between {meta.get('min')} and "
                         f"{meta.get('max')}; received {value!r}. Set a number in that range.")
    if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
        raise InputError(
            f"config key '{where}' must be between {meta.get('min', '-inf')} and "
            f"{meta.get('max', 'inf')}; received {value!r}."
        )
    return value


def from_dict(raw, origin="edgebuild.toml"):
    """Build a `BuildConfig` from nested dicts, rejecting unknown keys and bad values."""
    if not isinstance(raw, dict):
        raise InputError(f"{origin} must be a table of sections; received {type(raw).__name__}.")
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise InputError(f"unknown config section [{name}] in {origin}.{did_you_mean(name, SECTIONS, 0.5, listing=True)}")
        if not isinstance(values, dict):
            raise InputError(f"config section [{name}] in {origin} must be a table; received {values!r}.")
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[name])}
        checked = {}
        for key, value in values.items():
            if key not in fields:
                raise InputError(
                    f"unknown config key '{name}.{key}' in {origin}."
                    f"{did_you_mean(key, fields, 0.5, listing=True)}"
                )
            checked[key] = _check_value(f"{name}.{key}", fields[key], value)
        sections[name] = SECTIONS[name](**checked)
    declared = {name: sections.pop(name, None) or cls() for name, cls in SECTIONS.items() if name not in BUILT_IN}
    config = BuildConfig(**sections, declared=declared)
    _check_together(config, origin)
    return config


def _check_together(config, origin):
    """Rules that tie several keys together."""
    check_preprocess(config.preprocess, config.data.channels)
    recipe = "" if config.validate.model else config.train.recipe  # (a model file is validated, not built)
    if config.task.kind == "anomaly" and recipe in BUILTIN and recipe != "autoencoder":
        raise InputError(f"an anomaly model reconstructs its input window, and the built-in recipe {recipe!r} is a "
                         f"classifier; received train.recipe = {recipe!r} with task.kind = 'anomaly' in {origin}. Set "
                         "train.recipe = 'autoencoder' (or your own autoencoder).")
    if config.task.kind != "anomaly" and recipe == "autoencoder":
        raise InputError(f"the autoencoder recipe reconstructs its input and outputs no class scores; received "
                         f"train.recipe = 'autoencoder' with task.kind = {config.task.kind!r} in {origin}. Set "
                         "task.kind = 'anomaly', or choose a classifier recipe.")
    if config.task.kind != "classification" and config.task.top_k > 1:
        raise InputError(f"task.top_k ranks class scores, and a task.kind = {config.task.kind!r} model outputs none; "
                         f"received task.top_k = {config.task.top_k} in {origin}. Remove task.top_k.")
    if "tflite" not in config.export.formats:
        raise InputError(f"export.formats must include 'tflite': the int8 .tflite is what every target runs and what the "
                         f"int8 ONNX is converted from; received {config.export.formats} in {origin}. Set "
                         "export.formats = [\"tflite\"] or [\"tflite\", \"onnx\"].")
    t = config.train
    pp = config.preprocess
    if t.recipe in ("mobilenet_v3_small", "efficientnet_v2_b0") and (
            [float(v) for v in pp.pixel_range] != [0.0, 1.0] or pp.mean or pp.std):
        raise InputError(
            f"train.recipe {t.recipe!r} rescales 0..1 input to -1..1 inside the model (as its pretrained weights "
            f"expect), so it needs the default preprocessing; received preprocess.pixel_range = {pp.pixel_range}, "
            f"mean {pp.mean}, std {pp.std} in {origin}. Remove the [preprocess] settings."
        )
    if t.weights and not (t.weights.endswith((".weights.h5", ".keras"))):
        raise InputError(
            f"train.weights must be a local .weights.h5 or .keras file; received {t.weights!r} in {origin}. "
            "Save the weights with model.save_weights('backbone.weights.h5'), or set a whole trained model "
            "(.keras or Keras 2 .h5) as train.recipe instead."
        )
    if t.epochs == 0 and t.recipe in BUILTIN and not t.weights:
        raise InputError(
            f"train.epochs = 0 keeps the model untrained, which needs a trained model (a .keras file in "
            f"train.recipe, or train.weights); received recipe {t.recipe!r} with no weights in {origin}. "
            "Set train.epochs >= 1."
        )


def parse_override(text):
    """'section.key=value' -> (section, key, value), the value parsed as TOML (bare words as strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise InputError(f"--set takes section.key=value; received {text!r}. Example: --set train.epochs=2")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise InputError(f"--set {dotted}: the value is nested too deeply to read ({len(raw)} characters). "
                         "Give a plain number, string or list.") from None
    return section, key, value


def load(path=None, overrides=(), base=None, base_origin="", sections=None):
    """Read the TOML file (if any), apply the overrides in order (`section.key=value` text as --set gives
    it, or typed `("section.key", value)` pairs as the command line's own options give them), validate.

    With `base` (the config a finished build recorded), the file contributes only its `sections`
    (key by key, over the base) and the overrides apply on top: what a build was made with stays."""
    raw = json.loads(json.dumps(base)) if base else {}
    origin = base_origin or "defaults"
    if path is not None:
        path = Path(path)
        origin = f"{origin} and {path}" if base else str(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist. Pass --config PATH or create edgebuild.toml.")
        try:
            from_file = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not valid TOML: {exc}. Fix the syntax.") from None
        except RecursionError:
            raise InputError(f"{path} is nested too deeply to read as TOML. An edgebuild config is sections of "
                             "plain keys; remove the deep nesting.") from None
        for section, values in from_file.items():
            if sections is not None and section not in sections:
                continue
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section].update(values)
            else:
                raw[section] = values
    for item in overrides:  # "section.key=value" strings (--set, TOML values) or typed ("section.key", value) pairs
        if isinstance(item, str):
            section, key, value = parse_override(item)
        else:
            (section, _, key), value = item[0].partition("."), item[1]
        _check_override_key(section, key)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise InputError(f"config section [{section}] must be a table; received {raw[section]!r}.")
        raw[section][key] = value
    return from_dict(raw, origin)


def _check_override_key(section, key):
    """An unknown section or key in --set is named as coming from --set (not from the file or defaults)."""
    if section not in SECTIONS:
        raise InputError(f"unknown config section [{section}] (from --set {section}.{key})."
                         f"{did_you_mean(section, SECTIONS, 0.5, listing=True)}")
    fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if key not in fields:
        raise InputError(f"unknown config key '{section}.{key}' (from --set)."
                         f"{did_you_mean(key, fields, 0.5, listing=True)}")


def describe():
    """Every section.key with its default and description, for `edgebuild config`."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {json.dumps(default)}  # {f.metadata['doc']}")
    return "\n".join(lines)
