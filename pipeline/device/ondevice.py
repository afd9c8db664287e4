"""On-target validator: runs a .tflite or .onnx model over inputs and writes its raw outputs.

It runs inside the target's root filesystem (emulated or real), so it imports only the Python
standard library, numpy and the target's runtime: a TFLite runtime for a `.tflite` (LiteRT,
tflite-runtime, or TensorFlow Lite Micro with `--runtime tflite-micro`), onnxruntime for an `.onnx`.

    python3 ondevice.py MODEL.tflite INPUTS.npy OUT.npy --batch 1 --threads 1
    python3 ondevice.py MODEL.tflite INPUTS.npy OUT.npy --kernels reference   (LiteRT's reference kernels)
    python3 ondevice.py MODEL.tflite INPUTS.npy OUT.npy --runtime tflite-micro  (arena usage on stderr)
    python3 ondevice.py MODEL.onnx INPUTS.npy OUT.npy --batch 1 --threads 1
    python3 ondevice.py MODEL.tflite INPUTS.npy OUT.npz --dump 0     (every tensor of sample 0)
    python3 ondevice.py MODEL.tflite INPUTS.npy OUT.npz --dump 0 --dump-count 32  (of samples 0-31, stacked)
    python3 ondevice.py MODEL.tflite INPUTS.npy OUT.npy --keep-from 300  (run 0-299, then keep every tensor
                                                                          of 300-, into OUT.kept.npz)

Reads inputs (N, H, W, C) of the model's input dtype (int8, uint8 or float32), runs the interpreter
at the given batch size in one long-lived process, writes the raw outputs to OUT.npy and a JSON line
with timings and the runtime's name and version to stdout. A model the runtime refuses (cannot load,
allocate or run) exits 3 with {"refused": "<the runtime's reason>"}.
"""

import argparse
import json
import platform
import sys
import time


# --kernels: which kernels a TFLite runtime uses. "default" is what the runtime does unasked (LiteRT and
# tflite-runtime apply the XNNPACK delegate to the ops it covers); "builtin" the builtin optimized
# kernels without delegates; "reference" the reference kernels, the ones TFLM's are ported from.
KERNELS = {"default": "AUTO", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}
TFLM_ARENA = 16 * 1024 * 1024  # the arena the validator gives TFLM; what the model uses is measured and reported


def load_interpreter(runtime=None, kernels="default"):
    """(an Interpreter factory, the runtime's name): LiteRT or tflite-runtime with the chosen kernels,
    or TensorFlow Lite Micro."""
    if runtime == "tflite-micro":
        return TflmInterpreter, "tflite-micro"
    try:
        from ai_edge_litert.interpreter import Interpreter

        return _with_kernels(Interpreter, kernels), "ai-edge-litert"
    except ImportError:
        from tflite_runtime.interpreter import Interpreter

        return _with_kernels(Interpreter, kernels), "tflite-runtime"


def _with_kernels(Interpreter, kernels):
    if kernels == "default":
        return Interpreter
    resolver = getattr(sys.modules[Interpreter.__module__].OpResolverType, KERNELS[kernels])

    def make(**kwargs):
        return Interpreter(experimental_op_resolver_type=resolver, **kwargs)

    return make


class TflmInterpreter:
    """TensorFlow Lite Micro's Python interpreter (the microcontroller runtime, reference kernels, on
    this machine's ISA) behind the Interpreter calls main() makes. Its batch is the model's own (1)."""

    def __init__(self, model_path, num_threads=1, preserve=False):
        from tflite_micro.python.tflite_micro import runtime

        config = runtime.InterpreterConfig.kPreserveAllTensors if preserve else \
            runtime.InterpreterConfig.kAllocationRecording
        self.interp = runtime.Interpreter.from_file(model_path, arena_size=TFLM_ARENA, intrepreter_config=config)
        with open(model_path, "rb") as f:  # GetTensor past the last tensor crashes: count them first
            self.count = len(runtime.convert_bytearray_to_object(bytearray(f.read())).subgraphs[0].tensors)
        self.invoked = preserve  # a preserving interpreter records no allocations

        def detail(d, index):
            shape = [int(v) for v in d["shape"]]
            return {"index": index, "dtype": d["dtype"], "shape": shape, "shape_signature": shape}

        self.inp = detail(self.interp.get_input_details(0), 0)
        self.out = detail(self.interp.get_output_details(0), 0)

    def get_input_details(self):
        return [self.inp]

    def get_output_details(self):
        return [self.out]

    def resize_tensor_input(self, index, shape):
        raise ValueError("TFLM runs the model's own batch size")

    def allocate_tensors(self):
        pass

    def set_tensor(self, index, value):
        self.interp.set_input(value, 0)

    def invoke(self):
        self.interp.invoke()
        if not self.invoked:  # the recording allocator's figures, once, on stderr: "Arena allocation total N bytes"
            self.invoked = True
            sys.stdout.flush()
            self.interp.print_allocations()

    def get_tensor(self, index):
        return self.interp.get_output(0)

    def tensors(self):
        """{index: array} of every tensor kept (preserve=True)."""
        import numpy as np

        kept = {}
        for i in range(self.count):
            t = self.interp.GetTensor(i, 0)
            if t is not None and t.get("tensor_data") is not None:
                kept[i] = np.array(t["tensor_data"]).reshape([int(v) for v in t["shape"]])
        return kept


class OnnxInterpreter:
    """onnxruntime behind the few Interpreter calls main() makes (details, resize, allocate, set,
    invoke, get), so both formats share one loop: same batching, padding, timing and refusals."""

    def __init__(self, model_path, num_threads=1):
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        types = {"tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(float)": np.float32}

        def detail(value, index):
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in value.shape]
            return {"index": index, "name": value.name, "dtype": types.get(value.type, np.float32),
                    "shape": [1 if d == -1 else d for d in dims], "shape_signature": dims}

        self.inp = detail(self.session.get_inputs()[0], 0)
        self.out = detail(self.session.get_outputs()[0], 1)
        self.value = None

    def get_input_details(self):
        return [self.inp]

    def get_output_details(self):
        return [self.out]

    def resize_tensor_input(self, index, shape):
        pass  # a dynamic batch dimension takes any batch

    def allocate_tensors(self):
        pass

    def set_tensor(self, index, value):
        self.value = value

    def invoke(self):
        self.result = self.session.run(None, {self.inp["name"]: self.value})[0]

    def get_tensor(self, index):
        return self.result


def runtime_version(runtime):
    try:
        from importlib import metadata

        return metadata.version(runtime)
    except Exception:
        if runtime == "tflite-runtime":
            import tflite_runtime

            return tflite_runtime.__version__
        if runtime == "onnxruntime":
            import onnxruntime

            return onnxruntime.__version__
        return "unknown"


def dump(Interpreter, runtime, args, x):
    """Run one sample with every intermediate tensor kept, on the builtin kernels (default delegates
    off: a delegate keeps its own intermediates), and save them as t<index> in an .npz. With
    --dump-count N, samples --dump .. --dump + N - 1 one at a time, each tensor stacked over them."""
    import numpy as np

    try:
        tensors = keep_every_tensor(Interpreter, runtime, args, x[args.dump : args.dump + (args.dump_count or 1)])
    except Exception as exc:
        print(json.dumps({"refused": " ".join(str(exc).split())[:500]}))
        return 3
    if not args.dump_count:
        tensors = {k: v[0] for k, v in tensors.items()}
    np.savez(args.out, **tensors)
    print(json.dumps({"runtime": runtime, "runtime_version": runtime_version(runtime), "tensors": len(tensors)}))
    return 0


def keep_every_tensor(Interpreter, runtime, args, x):
    """{"t<index>": that tensor of each sample of `x`, stacked} over every sample, run one at a time with
    every intermediate tensor kept (builtin kernels unless --kernels reference; TFLM's own); only the
    --dump-tensors ones when given. `Interpreter` is load_interpreter's for the default kernels."""
    import numpy as np

    if runtime == "tflite-micro":
        interp = TflmInterpreter(args.model, preserve=True)
    else:
        kernels = "builtin" if args.kernels == "default" else args.kernels
        resolver = getattr(sys.modules[Interpreter.__module__].OpResolverType, KERNELS[kernels])
        interp = Interpreter(model_path=args.model, num_threads=1, experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=resolver)
    runs = []
    for _ in each_alone(interp, x):
        kept = kept_tensors(interp, runtime)
        runs.append(kept if args.dump_tensors is None else {k: v for k, v in kept.items() if k in args.dump_tensors})
    return {k: np.stack([run[k] for run in runs]) for k in runs[0] if all(k in run for run in runs)} if runs else {}


def each_alone(interp, x):
    """Run each sample of `x` on its own through `interp` (a batch of 1, or the model's fixed batch with the
    rest zeros), allocating first; yields each sample's index after its invoke."""
    import numpy as np

    inp = interp.get_input_details()[0]
    signature = inp.get("shape_signature")
    fixed = int(signature[0]) if signature is not None and len(signature) and signature[0] != -1 else None
    if not fixed:
        interp.resize_tensor_input(inp["index"], [1] + list(inp["shape"][1:]))
    interp.allocate_tensors()
    for i in range(len(x)):
        sample = x[i : i + 1]
        if fixed and fixed > 1:
            sample = np.concatenate([sample, np.zeros((fixed - 1,) + sample.shape[1:], sample.dtype)])
        interp.set_tensor(inp["index"], sample)
        interp.invoke()
        yield i


def kept_tensors(interp, runtime):
    """{"t<index>": a copy of the tensor} of every tensor the interpreter kept after an invoke."""
    import numpy as np

    if runtime == "tflite-micro":
        return {f"t{i}": v for i, v in interp.tensors().items()}
    tensors = {}
    for detail in interp.get_tensor_details():
        try:
            tensors[f"t{detail['index']}"] = np.array(interp.get_tensor(detail["index"]))
        except ValueError:  # a tensor without data (an unused or freed buffer)
            continue
    return tensors


def main(argv=None):
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("inputs")
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump", type=int, help="run only this sample and write every tensor to OUT (.npz)")
    parser.add_argument("--dump-count", type=int, metavar="N",
                        help="with --dump: N samples from that one, each tensor stacked over them")
    parser.add_argument("--dump-tensors", type=lambda s: {f"t{i}" for i in s.split(",") if i}, metavar="I,J,...",
                        help="with --dump or --keep-from: keep only these tensor indices")
    parser.add_argument("--keep-from", type=int, metavar="K",
                        help="run only inputs 0..K-1; then run each input from K on alone with every tensor kept "
                             "(as --dump does), into OUT with .kept.npz: one process for both")
    parser.add_argument("--runtime", choices=["tflite-micro"], help="run a .tflite on TensorFlow Lite Micro")
    parser.add_argument("--kernels", choices=sorted(KERNELS), default="default",
                        help="the TFLite runtime's kernels (dumps use builtin unless reference is asked)")
    parser.add_argument("--reference", type=int, default=0, metavar="N",
                        help="also run the first N inputs on the reference kernels, into OUT with .ref.npy")
    args = parser.parse_args(argv)

    x = np.load(args.inputs)
    if args.model.lower().endswith(".onnx"):
        Interpreter, runtime = OnnxInterpreter, "onnxruntime"
        if args.dump is not None:
            print(json.dumps({"refused": "keeping every tensor (--dump) is done for .tflite models only"}))
            return 3
    else:
        Interpreter, runtime = load_interpreter(args.runtime, "default" if args.dump is not None else args.kernels)
    if args.dump is not None:
        return dump(Interpreter, runtime, args, x)
    keep = None
    if args.keep_from is not None:
        x, keep = x[: args.keep_from], x[args.keep_from :]
    started = time.perf_counter()
    batch = max(1, min(args.batch, len(x)))
    try:
        interp = Interpreter(model_path=args.model, num_threads=args.threads)
        inp = interp.get_input_details()[0]
        out = interp.get_output_details()[0]
        if inp["dtype"] != x.dtype:
            raise ValueError(f"model input is {np.dtype(inp['dtype']).name}, inputs are {x.dtype}")
        if tuple(inp["shape"][1:]) != x.shape[1:]:
            raise ValueError(f"model input shape is {list(inp['shape'])}, inputs are {list(x.shape)}")
        signature = inp.get("shape_signature")
        if signature is not None and len(signature) and signature[0] != -1:
            batch = int(signature[0])  # converted with a fixed batch: its graph may depend on it
        else:
            interp.resize_tensor_input(inp["index"], [batch] + list(inp["shape"][1:]))
        interp.allocate_tensors()
    except Exception as exc:  # the runtime's own reason, on one line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        print(json.dumps({"refused": reason[:500]}))
        return 3
    setup_s = time.perf_counter() - started

    results = np.zeros((len(x),) + tuple(out["shape"][1:]), dtype=out["dtype"])
    invokes = []  # each invoke's own wall time (the copy in and out of the tensors excluded), ms per image
    started = time.perf_counter()
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch:  # pad the last batch; padded rows are dropped
            chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
        interp.set_tensor(inp["index"], chunk)
        try:
            began = time.perf_counter()
            interp.invoke()
            invokes.append(round((time.perf_counter() - began) * 1000 / batch, 4))
        except Exception as exc:
            print(json.dumps({"refused": " ".join(f"invoke failed: {exc}".split())[:500]}))
            return 3
        results[start : start + n] = interp.get_tensor(out["index"])[:n]
    infer_s = time.perf_counter() - started
    np.save(args.out, results)
    reference = 0
    if args.reference and runtime in ("ai-edge-litert", "tflite-runtime"):
        reference = min(args.reference, len(x))
        try:
            np.save(_reference_path(args.out), run_reference(args.model, x[:reference]))
        except Exception as exc:
            print(json.dumps({"refused": " ".join(f"reference kernels: {exc}".split())[:500]}))
            return 3
    kept = None
    if keep is not None and runtime != "onnxruntime":
        try:  # a failure here is the tensors' alone: the run's outputs stand, and the line says why
            tensors = keep_every_tensor(load_interpreter(args.runtime, "default")[0], runtime, args, keep)
            np.savez(_suffixed(args.out, ".kept.npz"), **tensors)
            kept = {"samples": int(len(keep)), "tensors": len(tensors)}
        except Exception as exc:
            kept = {"failed": " ".join(str(exc).split())[:500] or type(exc).__name__}
    print(json.dumps({
        "runtime": runtime,
        "runtime_version": runtime_version(runtime),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "images": int(len(x)),
        "batch": batch,
        "threads": args.threads,
        "kernels": "tflm-reference" if runtime == "tflite-micro" else args.kernels,
        "setup_seconds": setup_s,
        "inference_seconds": infer_s,
        "reference_samples": reference,
        "invoke_ms": invokes,
        **({"kept": kept} if kept is not None else {}),
    }))
    return 0


def _reference_path(out):
    return _suffixed(out, ".ref.npy")


def _suffixed(out, suffix):
    """OUT with `suffix` in place of its .npy ending (a file beside it, fetched with it from a board)."""
    return out[: -len(".npy")] + suffix if out.endswith(".npy") else out + suffix


def run_reference(model, x):
    """The outputs of `x` on the runtime's reference kernels, one sample at a time: they take the same
    code path on every instruction set, so a difference from another machine's is the ISA's or the
    compiler's, never a kernel's choice (the ISA check)."""
    import numpy as np

    Interpreter, _ = load_interpreter(None, "reference")
    interp = Interpreter(model_path=model, num_threads=1)
    out = interp.get_output_details()[0]
    results = [np.array(interp.get_tensor(out["index"])[:1]) for _ in each_alone(interp, x)]
    return np.concatenate(results) if results else np.zeros((0,), np.float32)


if __name__ == "__main__":
    sys.exit(main())
