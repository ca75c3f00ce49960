"""Run an exported student with ONNX Runtime: the model's metadata, provider choice with an honest
fallback, and batched HWC uint8 in, HWC uint8 out.

    toons = Toonifier("exports/toonify.onnx", provider="auto").run(face_crops)   # [N, R, R, 3] uint8 RGB
    toons = Toonifier("styles.onnx").run(face_crops, style="ukiyoe", strength=0.6)   # a conditioned model

A conditioned model (ModelInfo.styles not empty) has two more inputs, `style` (int64 [N], an index
into the styles) and `strength` (float32 [N] in [0, 1]: 0 reconstructs the photo, 1 is the full
style); a model with one style folded in (`distill export --style`) names it in its metadata's
`style` and `strength`, and takes only those.

Everything the runtime needs to know about a model travels in the ONNX file's `metadata_props`
(ModelInfo); nothing here imports torch or distill.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from runtime.common import ToonifyError, UsageError, note
from runtime.images import hwc_to_nchw, nchw_to_hwc
from runtime.options import setting

FORMAT = "1"
FORMAT_KEY = "toonify_fast.format"
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}
SHORT_NAMES = {v: k for k, v in PROVIDERS.items()}
LABELS = {"tensorrt": "TensorRT", "cuda": "CUDA", "cpu": "CPU"}
BUILD_HINT = "build one with `make demo` (writes exports/demo.onnx) or `toonify-fast distill export ...`"
DEFAULT_MODEL = Path("exports") / "toonify.onnx"
DEMO_MODEL = Path("exports") / "demo.onnx"      # what `make demo` exports: the default until there is a real one
DEMO_KEY = "demo"                               # metadata: "1" in the demo's untrained student
MODEL_ENV = "TOONIFY_FAST_MODEL"
ORT_HINT = "pip install 'toonify-fast[cpu]', or 'toonify-fast[gpu]' with an NVIDIA GPU (never both)"
GPU_HINT = ("use --provider auto or cpu; a GPU needs an NVIDIA driver and the GPU build: "
            "pip uninstall onnxruntime && pip install 'toonify-fast[gpu]'")


def load_onnxruntime():
    """The onnxruntime module, or a ToonifyError saying how to add it: the base install has
    neither build, since only one of onnxruntime and onnxruntime-gpu may be installed."""
    try:
        import onnxruntime
    except ImportError:
        raise ToonifyError("ONNX Runtime is not installed here (the base install has neither onnxruntime "
                           "nor onnxruntime-gpu)", hint=ORT_HINT) from None
    return onnxruntime


try:
    import onnxruntime as ort
except ImportError:      # a base install: everything that runs a model calls load_onnxruntime() first
    ort = None


def _require_ort() -> None:
    if ort is None:
        load_onnxruntime()


def model_setting():
    """The `model` setting of every converting command (photos, video)."""
    return setting(None, f"Exported model (.onnx). Default: ${MODEL_ENV}, then {DEFAULT_MODEL}, then {DEMO_MODEL} "
                         "(make demo's).", flags=("-m", "--model"))


def provider_setting():
    """The `provider` setting of every converting command; provider_chain says what each name means."""
    return setting("auto", "ONNX Runtime provider: auto (TensorRT if TOONIFY_FAST_TENSORRT=1, then CUDA, then CPU), "
                           "tensorrt, cuda or cpu.")


def style_setting():
    """The `style` setting of every converting command."""
    return setting(None, "Style of a model with several (`toonify-fast info MODEL` lists them; default: its first).")


def batch_setting():
    """The `batch_size` setting of every converting command."""
    return setting(None, "Face crops per model run, across images or frames (default: 1 on CPU, 8 on a GPU).", min=1)


class ModelError(UsageError):
    """The model file is missing, not ONNX, not a toonify-fast export, not runnable here, or its
    graph does not take and give [N, 3, H, W] float32 images; a usage error (exit status 2)."""


class EngineError(ToonifyError):
    """Inputs the model cannot take (wrong dtype, shape, or a size that is not a multiple)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about an exported student; stored as string metadata_props."""
    input_name: str
    output_name: str
    resolution: int                        # training resolution: face crops are resolution x resolution
    size_multiple: int = 8                 # H and W of any input must be multiples of this
    alignment: str = "ffhq"                # "ffhq": FFHQ-aligned face crops; "none": whole images
    layout: str = "NCHW"
    color: str = "RGB"
    value_range: str = "-1,1"
    normalisation: str = "x = u8 / 127.5 - 1"
    preset: str = ""
    teacher_base_sha256: str = ""
    teacher_blended_sha256: str = ""
    exported_at: str = ""                  # ISO 8601
    toonify_fast_version: str = ""
    precision: str = "fp32"                # "fp32" | "fp16" | "int8"; inputs and outputs are float32 always
    styles: str = ""                       # a conditioned model's style names, comma-separated, in index order
    default_strength: float = 1.0          # its strength when none is asked for
    format: str = FORMAT
    extra: dict = field(default_factory=dict)   # any other metadata_props, kept as read

    def to_metadata(self) -> dict[str, str]:
        """The metadata_props to write into the ONNX file (all values strings)."""
        meta = {(FORMAT_KEY if k == "format" else k): str(v) for k, v in asdict(self).items() if k != "extra"}
        if not self.styles:       # a one-input model's metadata stays what it always was
            del meta["styles"], meta["default_strength"]
        clash = sorted(set(meta) & set(self.extra))
        if clash:
            raise ValueError(f"extra metadata would overwrite {clash}")
        return {**meta, **{str(k): str(v) for k, v in self.extra.items()}}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: str | os.PathLike) -> "ModelInfo":
        """Parse and check metadata_props; raises ModelError naming `path` when it is not ours or unsupported."""
        if FORMAT_KEY not in meta:
            raise ModelError(f"not a toonify-fast model (its metadata has no '{FORMAT_KEY}')", path,
                             hint="models come from `toonify-fast distill export`, which writes the metadata the runtime needs")
        if meta[FORMAT_KEY] != FORMAT:
            raise ModelError(f"model format {meta[FORMAT_KEY]!r} is not supported (this runtime reads format {FORMAT})",
                             path, hint="upgrade toonify-fast, or export the model with this version")
        names = {f.name for f in fields(cls)} - {"format", "extra"}
        missing = [n for n in ("input_name", "output_name", "resolution") if n not in meta]
        if missing:
            raise ModelError(f"the model's metadata lacks {', '.join(missing)}", path, hint="re-export the model")
        known = {k: v for k, v in meta.items() if k in names}
        try:
            known["resolution"] = int(known["resolution"])
            known["size_multiple"] = int(known.get("size_multiple", cls.size_multiple))
            known["default_strength"] = float(known.get("default_strength", cls.default_strength))
        except ValueError as e:
            raise ModelError(f"bad metadata: {e}", path, hint="re-export the model") from None
        if known["resolution"] <= 0 or known["size_multiple"] <= 0 or known["resolution"] % known["size_multiple"]:
            raise ModelError(f"bad metadata: resolution {known['resolution']} is not a positive multiple of "
                             f"size_multiple {known['size_multiple']}", path, hint="re-export the model")
        info = cls(**known, format=meta[FORMAT_KEY],
                   extra={k: v for k, v in meta.items() if k not in names and k != FORMAT_KEY})
        for key, value in {"layout": "NCHW", "color": "RGB", "value_range": "-1,1"}.items():
            if getattr(info, key) != value:
                raise ModelError(f"unsupported {key} {getattr(info, key)!r} (this runtime feeds {value})", path)
        if info.alignment not in ("ffhq", "none"):
            raise ModelError(f"unknown alignment {info.alignment!r} (expected 'ffhq' or 'none')", path)
        if not 0.0 <= info.default_strength <= 1.0:
            raise ModelError(f"bad metadata: default_strength {info.default_strength} is not in [0, 1]", path,
                             hint="re-export the model")
        return info

    @property
    def style_names(self) -> tuple[str, ...]:
        """A conditioned model's styles, in index order; () for a one-input model."""
        return tuple(self.styles.split(",")) if self.styles else ()


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read only a model's metadata (via `onnx` when installed, else an ONNX Runtime session)."""
    return ModelInfo.from_metadata(_metadata_props(_existing_model(path)), path)


def _existing_model(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UsageError("no such model file" if not path.exists() else "not a file", path, hint=BUILD_HINT)
    return path


def find_model(model: str | os.PathLike | None) -> Path:
    """--model, then $TOONIFY_FAST_MODEL, then exports/toonify.onnx, then exports/demo.onnx (both
    relative to the working folder). The demo's untrained student is said so in one line."""
    env = os.environ.get(MODEL_ENV)
    if model or env:
        path = Path(model or env)
        if not path.is_file():
            raise UsageError(f"no such model file ({'--model' if model else f'${MODEL_ENV}'})", path, hint=BUILD_HINT)
        return path
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    if DEMO_MODEL.is_file():
        if read_model_info(DEMO_MODEL).extra.get(DEMO_KEY) == "1":
            note(f"using the demo model {DEMO_MODEL} (untrained; export your own to {DEFAULT_MODEL})")
        return DEMO_MODEL
    raise UsageError(f"no such model file (the default when neither --model nor ${MODEL_ENV} is set; "
                     f"{DEMO_MODEL} is missing too)", DEFAULT_MODEL, hint=BUILD_HINT + ", or pass --model")


def _metadata_props(path: Path) -> dict[str, str]:
    try:
        import onnx
    except ImportError:
        _require_ort()
        return _session(path, [PROVIDERS["cpu"]], _cpu_options(1)).get_modelmeta().custom_metadata_map
    try:
        # The weights are not needed; external data files (big models) are left unread.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"not an ONNX model ({type(e).__name__}: {e})", path) from None
    return {p.key: p.value for p in model.metadata_props}


def io_problem(shape: list, type_name: str, resolution: int) -> str:
    """What is wrong with a model input's or output's ONNX shape and type for images, or ''.

    It must be rank 4 [N, 3, H, W] 'tensor(float)'; N, H and W may be dynamic (names or None),
    fixed H and W must equal `resolution`.
    """
    if type_name != "tensor(float)":
        return f"has type {type_name}, not float32 (tensor(float))"
    if len(shape) != 4:
        return f"has rank {len(shape)} {list(shape)}, not 4 [N, 3, H, W]"
    if isinstance(shape[1], int) and shape[1] != 3:
        return f"has {shape[1]} channels {list(shape)}, not 3 (RGB)"
    fixed = [d for d in shape[2:] if isinstance(d, int)]
    if any(d != resolution for d in fixed):
        return f"has the fixed size {list(shape)}, which does not match the model resolution {resolution}"
    return ""


def available_providers() -> list[str]:
    """Short names ('tensorrt', 'cuda', 'cpu') of the providers this onnxruntime build lists."""
    _require_ort()
    return [SHORT_NAMES[p] for p in ort.get_available_providers() if p in SHORT_NAMES]


def provider_chain(provider: str) -> list[str]:
    """Short provider names to try in order for `provider` ('auto', 'tensorrt', 'cuda' or 'cpu').

    'auto' tries TensorRT only when TOONIFY_FAST_TENSORRT=1 (its engine build takes minutes on a
    first run), then CUDA, then CPU. An unknown name is a usage error (exit code 2).
    """
    chains = {"tensorrt": ["tensorrt", "cuda", "cpu"], "cuda": ["cuda", "cpu"], "cpu": ["cpu"],
              "auto": (["tensorrt"] if os.environ.get("TOONIFY_FAST_TENSORRT") == "1" else []) + ["cuda", "cpu"]}
    if provider not in chains:
        raise UsageError(f"unknown provider {provider!r}", hint=f"choose one of {', '.join(chains)}")
    return chains[provider]


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's arithmetic units)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        pairs, phys = set(), None
        for line in lines:
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                phys = value.strip()
            elif key.strip() == "core id":
                pairs.add((phys, value.strip()))
        cores = len(pairs) or logical
    except OSError:
        cores = logical
    return max(1, min(cores, logical))


def _cpu_options(threads: int):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One convolution at a time, each spread over every physical core: the student is a chain of
    # big convolutions with no parallel branches worth an inter-op pool (bench/runtime.py times it).
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    return so


def _gpu_provider_options(name: str) -> dict:
    if name == "cuda":
        # EXHAUSTIVE benchmarks every cuDNN algorithm once per input shape (hence the warm-up);
        # the max workspace lets cuDNN pick the fast tensor-core kernels.
        return {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE", "cudnn_conv_use_max_workspace": "1",
                "do_copy_in_default_stream": "1", "arena_extend_strategy": "kSameAsRequested"}
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "toonify-fast" / "tensorrt"
    cache.mkdir(parents=True, exist_ok=True)
    # Engines take minutes to build; the cache makes every later start take seconds.
    return {"device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache)}


def _session(path: Path, providers: list, options):
    try:
        # enable_fallback=0: a provider that fails to start raises here, so we fall back ourselves
        # keeping the options of the next provider (ORT's own fallback drops them and prints).
        return ort.InferenceSession(str(path), options, providers=providers, enable_fallback=0)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"ONNX Runtime cannot load it: {first}", path) from None


def nvidia_driver() -> bool:
    """Whether an NVIDIA driver is installed (its CUDA driver library loads): without one no GPU
    provider can start, whatever the onnxruntime build lists."""
    try:
        ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
    except OSError:
        return False
    return True


NO_DRIVER = "found no NVIDIA driver (libcuda.so.1 does not load)"


def provider_status() -> dict[str, str]:
    """Every provider -> '' where a session on it would start here, else why not. What `info` shows."""
    built = available_providers()
    driver = nvidia_driver()
    status = {}
    for name in PROVIDERS:
        if name not in built:
            status[name] = "is not in this onnxruntime build (it needs onnxruntime-gpu)"
        elif name != "cpu" and not driver:
            status[name] = NO_DRIVER
        else:
            status[name] = "" if name == "cpu" else _library_failure(name)
    return status


def _library_failure(name: str) -> str:
    """Why a GPU provider's shared library does not load here (e.g. a CUDA library missing), or ''."""
    stem = f"onnxruntime_providers_{name}"
    lib = Path(ort.__file__).parent / "capi" / (f"{stem}.dll" if os.name == "nt" else f"lib{stem}.so")
    try:
        ctypes.CDLL(str(lib))
    except OSError as e:
        missing = str(e).split(": cannot open shared object file")
        return f"libraries missing ({missing[0]} not found)" if len(missing) > 1 else f"libraries do not load ({e})"
    return ""


def _open_session(path: Path, chain: list[str], options) -> tuple[object, dict[str, str]]:
    """A session on the first provider of `chain` that starts; returns it and why earlier ones did not."""
    built = available_providers()
    reasons = {n: "is not in this onnxruntime build (it needs onnxruntime-gpu)"
               for n in chain if n not in built}
    if any(n != "cpu" and n not in reasons for n in chain) and not nvidia_driver():
        reasons.update({n: NO_DRIVER for n in chain if n != "cpu" and n not in reasons})
    wanted = [n for n in chain if n not in reasons]
    if wanted != ["cpu"] and hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()    # CUDA and cuDNN from pip's nvidia-* wheels, when they are installed
    # ORT logs a missing CUDA library as an error and quietly runs on CPU; we say it in one line instead.
    ort.set_default_logger_severity(4)
    try:
        for i, name in enumerate(wanted):
            providers = [(PROVIDERS[n], _gpu_provider_options(n)) for n in wanted[i:] if n != "cpu"]
            try:
                session = _session(path, providers + [PROVIDERS["cpu"]], options)
                break
            except ModelError as e:
                if name == "cpu":
                    raise
                reasons[name] = _library_failure(name) or f"failed to start ({e.reason})"
    finally:
        ort.set_default_logger_severity(3)
    got = SHORT_NAMES[session.get_providers()[0]]
    for name in wanted[:wanted.index(got)]:
        reasons.setdefault(name, _library_failure(name) or "found no usable GPU or driver")
    return session, {n: reasons[n] for n in chain[:chain.index(got)]}


class Toonifier:
    """An ONNX Runtime session for one exported student.

    provider: 'auto' | 'tensorrt' | 'cuda' | 'cpu'. 'auto' takes the best provider that starts; it
    says in one line why a GPU provider did not start only where a GPU driver is present (on a
    CPU-only machine the CPU is no fallback). A GPU provider asked for by name that cannot start
    is a UsageError (exit status 2); TensorRT falling back to CUDA is a one-line warning.
    `.provider` is what the session really got.
    threads: CPU intra-op threads (default: the physical cores). batch_size: images per session run
    (default 1 on CPU, where bigger batches gain nothing, 8 on a GPU).
    """

    def __init__(self, model_path: str | os.PathLike, provider: str = "auto", threads: int | None = None,
                 batch_size: int | None = None):
        self.path = _existing_model(model_path)
        chain = provider_chain(provider)
        _require_ort()
        if provider == "auto":
            # 'auto' means the best this machine offers: only a GPU provider that is built, with a
            # driver to run on, and still fails is news.
            driver = nvidia_driver()
            chain = [n for n in chain if n in available_providers() and (n == "cpu" or driver)]
        self.session, self.fallbacks = _open_session(self.path, chain, _cpu_options(threads or physical_cores()))
        self.provider = SHORT_NAMES[self.session.get_providers()[0]]
        if self.fallbacks and provider != "auto" and self.provider == "cpu":
            raise UsageError(f"--provider {provider}: {LABELS[chain[0]]} cannot start here: {self.fallback_reason}",
                             self.path, hint=GPU_HINT)
        if self.fallbacks:
            note(f"running on {LABELS[self.provider]}, not {LABELS[chain[0]]}: {self.fallback_reason}",
                 "note" if provider == "auto" else "warning")
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self._check_io()
        self._check_condition_inputs()
        self.device = "cpu" if self.provider == "cpu" else "cuda"
        self.batch_size = batch_size or (1 if self.device == "cpu" else 8)
        if self.device == "cuda":
            self._warm_up()

    @property
    def resolution(self) -> int:
        return self.info.resolution

    @property
    def fallback_reason(self) -> str:
        """Why the session did not get the providers asked for first ('' when it did)."""
        return "; ".join(f"{LABELS[n]} {r}" for n, r in self.fallbacks.items())

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if self.info.input_name not in inputs or self.info.output_name not in outputs:
            raise ModelError(f"the metadata names input {self.info.input_name!r} and output "
                             f"{self.info.output_name!r}, the graph has {list(inputs)} and {list(outputs)}", self.path,
                             hint="re-export the model")
        # A graph that cannot map [N, 3, H, W] float32 images onto images of the same shape would
        # otherwise load, and fail (or give garbage) on the first batch.
        for kind, arg in (("input", inputs[self.info.input_name]), ("output", outputs[self.info.output_name])):
            problem = io_problem(arg.shape, arg.type, self.resolution)
            if problem:
                raise ModelError(f"its {kind} {arg.name!r} {problem}", self.path,
                                 hint="the runtime feeds [N, 3, H, W] float32 images and expects the same shape "
                                      "back: re-export the model with `toonify-fast distill export`")

    def _check_condition_inputs(self) -> None:
        if self.info.style_names:
            inputs = {i.name for i in self.session.get_inputs()}
            missing = [name for name in ("style", "strength") if name not in inputs]
            if missing:
                raise ModelError(f"the metadata lists styles ({self.info.styles}) but the graph has no "
                                 f"{' or '.join(repr(m) for m in missing)} input", self.path, hint="re-export the model")

    @property
    def styles(self) -> tuple[str, ...]:
        """The styles `run` takes by name (a conditioned model's; () for a one-input model)."""
        return self.info.style_names

    def check_condition(self, style: str | int | None = None, strength=None) -> None:
        """Raise UsageError unless run() can take this style and strength (see run), before any work."""
        self._condition(style, strength, 1 if strength is None or np.ndim(strength) == 0 else len(strength))

    def _condition(self, style, strength, n: int) -> dict[str, np.ndarray]:
        """The extra inputs of a run of n images: style [n] int64 and strength [n] float32 (none for a
        one-input model, which takes only the style and strength folded into it)."""
        names = self.info.style_names
        if not names:
            built_in = self.info.extra.get("style"), self.info.extra.get("strength")
            fits = (style is None or style == built_in[0]) and (strength is None or (
                built_in[1] is not None and np.allclose(strength, float(built_in[1]), atol=1e-6)))
            if not fits:
                raise UsageError("this model has no style or strength input" + (
                    f": it has {built_in[0]} at strength {built_in[1]} built in" if built_in[0] else ""), self.path,
                    hint="leave out --style and --strength, or use a model exported with its style inputs")
            return {}
        if style is None:
            index = 0
        elif isinstance(style, (int, np.integer)) and not isinstance(style, bool):
            index = int(style)
            if not 0 <= index < len(names):
                raise UsageError(f"style index {index} is out of range", self.path,
                                 hint=f"this model's styles: {', '.join(names)}")
        elif style in names:
            index = names.index(style)
        else:
            raise UsageError(f"no style {style!r} in this model", self.path, hint=f"its styles: {', '.join(names)}")
        values = np.asarray(self.info.default_strength if strength is None else strength, np.float32)
        if values.ndim > 1 or (values.ndim == 1 and len(values) != n):
            raise EngineError(f"strength must be one value or one per image ({n}), got shape {values.shape}")
        if not np.all((values >= 0) & (values <= 1)):
            raise UsageError(f"strength must lie in [0, 1], got {strength}",
                             hint="0 reconstructs the photo, 1 is the full style")
        return {"style": np.full(n, index, np.int64), "strength": np.broadcast_to(values, (n,)).copy()}

    def _warm_up(self) -> None:
        # A new input shape costs a cuDNN algorithm search (or a TensorRT engine build): pay it now
        # for the shapes run() serves, the full batch and the single face.
        r = self.resolution
        for n in sorted({1, self.batch_size}):
            self._run_batch(np.zeros((n, 3, r, r), np.float32), self._condition(None, None, n))

    def _run_batch(self, x: np.ndarray, condition: dict[str, np.ndarray] | None = None) -> np.ndarray:
        # IO binding: the input is copied to the device once and the output is allocated there,
        # instead of ORT's per-call staging copies (on CPU this is the same as session.run).
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.info.input_name, x)
        for name, value in (condition or {}).items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(self.info.output_name, self.device)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as e:       # ORT's own exceptions: a graph that fails on this input
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"ONNX Runtime failed to run it on a {list(x.shape)} input: {first}", self.path,
                             hint="re-export the model") from None
        y = binding.copy_outputs_to_cpu()[0]
        if y.shape != x.shape or y.dtype != np.float32:
            raise ModelError(f"the model gave {list(y.shape)} {y.dtype} for a {list(x.shape)} float32 input "
                             "(it must give the input's shape back)", self.path, hint="re-export the model")
        if not np.isfinite(y).all():
            raise ModelError(f"the model gave {np.count_nonzero(~np.isfinite(y))} NaN or infinite values",
                             self.path, hint="its weights may be damaged: re-export the model (an --fp16 export "
                                             "can overflow: export it without --fp16)")
        return y

    def check_size(self, height: int, width: int) -> None:
        """Raise EngineError unless an H x W input suits the model (multiples of size_multiple)."""
        m = self.info.size_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise EngineError(f"input size {width}x{height} is not a multiple of {m}",
                              hint=f"crop or resize to multiples of {m} (the model was trained on "
                                   f"{self.resolution}x{self.resolution} face crops)")

    def run(self, images, style: str | int | None = None, strength=None) -> np.ndarray:
        """Toonify images: [N, H, W, 3] uint8 RGB (or a list of same-size [H, W, 3]) -> [N, H, W, 3] uint8 RGB.

        H and W must be multiples of `info.size_multiple`; FFHQ-aligned crops at `resolution` are
        what the student was trained on. Runs in batches of `batch_size`. A conditioned model takes
        `style` (a name in `styles` or its index; default the first) and `strength` (in [0, 1], one
        value or one per image; default the model's default_strength). A one-input model takes
        neither (or exactly the style and strength folded into it): UsageError otherwise.
        """
        if isinstance(images, (list, tuple)):
            if not images:
                return np.zeros((0, self.resolution, self.resolution, 3), np.uint8)
            if len({np.shape(im) for im in images}) > 1:
                raise EngineError(f"images in one run must have the same size, got {sorted({np.shape(im) for im in images})}")
            images = np.stack(images)
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise EngineError(f"expected [N, H, W, 3] uint8 RGB images, got {images.shape} {images.dtype}")
        self.check_size(*images.shape[1:3])
        condition = self._condition(style, strength, len(images))
        out = [nchw_to_hwc(self._run_batch(hwc_to_nchw(images[i:i + self.batch_size]),
                                           {k: v[i:i + self.batch_size] for k, v in condition.items()}))
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros_like(images)
