"""Checks of an adapter's files, which may come from anyone: the ``adapter_config.json`` payload, safetensors headers
and tensors, the index of a sharded adapter, and the digest of the weights that ties them to their config.

Both readers run these same checks: peft's (``PeftModel.from_pretrained`` / ``load_adapter``, through GRADIEND's
hooks in `gradiend_peft.tuner.persistence`) and `gradiend_peft.load_gradiend_model`. A safetensors file is read here,
not through ``safetensors.safe_open``: that maps the file into memory, so a tensor would change (or the process die
of SIGBUS) if another process rewrote the file in place while it is validated and loaded; the reader below copies
each tensor's bytes once with ``pread``, so what is validated is exactly what is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import nn

from ..atomic import UntrustedAdapterError
from .constants import MAX_LATENT_DIM, PEFT_TYPE_NAME, SHARD_FILE

MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_SHARDS = 99999
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_SHARD_FILE = re.compile(SHARD_FILE)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
FLOAT_TENSORS = {"gradiend_encoder": "encoder E", "gradiend_decoder": "decoder D", "gradiend_decoder_bias": "decoder bias c",
                 "gradiend_encoder_bias": "encoder bias", "gradiend_gradient_scale": "gradient scale"}
INDEX_TENSOR = "gradiend_kept_indices"


def shard_file_name(index: int, count: int) -> str:
    """``adapter_model-<index>-of-<count>.safetensors`` (1-based ``index``, five digits each, as transformers)."""
    return f"adapter_model-{index:05d}-of-{count:05d}.safetensors"


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise UntrustedAdapterError(message)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------ the config
def validate_adapter_config(raw: Any) -> dict[str, Any]:
    """Checks an untrusted ``adapter_config.json`` payload; returns it if it is a well-formed GRADIEND config.

    Raises:
        `UntrustedAdapterError`: naming the offending key and what was expected.
    """
    _expect(isinstance(raw, dict), "adapter_config.json must hold a JSON object.")
    _expect(raw.get("peft_type") == PEFT_TYPE_NAME, f"adapter_config.json is not a GRADIEND config (peft_type={raw.get('peft_type')!r}).")
    latent = raw.get("latent_dim", 1)
    _expect(_count(latent) and 0 < latent <= MAX_LATENT_DIM,
            f"latent_dim must be an integer in [1, {MAX_LATENT_DIM}], got {latent!r}.")
    for key in ("activation", "source", "target", "objective"):
        _expect(key not in raw or isinstance(raw[key], str), f"{key} must be a string, got {type(raw.get(key)).__name__}.")
    targets = raw.get("target_modules")
    _expect(targets is None or isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets)),
            "target_modules must be a string or a list of strings.")
    shapes = raw.get("target_shapes")
    if shapes is not None:
        _expect(isinstance(shapes, dict), "target_shapes must map module names to shapes.")
        for name, shape in shapes.items():
            _expect(isinstance(name, str) and bool(_MODULE_NAME.match(name)),
                    f"target_shapes has an invalid module name {name!r} (dotted identifiers only).")
            _expect(isinstance(shape, list) and 0 < len(shape) <= 4 and all(_count(d) and 0 < d < 2**31 for d in shape)
                    and math.prod(shape) < 2**40, f"target_shapes[{name!r}] is not a valid weight shape: {shape!r}.")
    kept = raw.get("kept_entries")
    if kept is not None:
        _expect(isinstance(kept, dict), "kept_entries must map module names to counts.")
        for name, count in kept.items():
            _expect(isinstance(name, str) and bool(_MODULE_NAME.match(name)), f"kept_entries has an invalid module name {name!r}.")
            _expect(_count(count) and count >= 0, f"kept_entries[{name!r}] must be a count.")
            if shapes is not None:
                _expect(name in shapes and count <= math.prod(shapes[name]),
                        f"kept_entries[{name!r}]={count} does not fit the module's recorded shape.")
    for key in ("base_model_name_or_path", "revision"):
        value = raw.get(key)
        _expect(value is None or (isinstance(value, str) and len(value) < 4096 and "\x00" not in value), f"{key} is malformed.")
    digest = raw.get("weights_digest")
    _expect(digest is None or (isinstance(digest, str) and bool(_DIGEST.fullmatch(digest))),
            f"weights_digest must be 'sha256:' and 64 hex digits, got {digest!r}.")
    return raw


def parse_config(data: bytes, where: str) -> dict[str, Any]:
    """The checked payload of an ``adapter_config.json`` read as ``data`` (at most `MAX_CONFIG_BYTES`)."""
    _expect(len(data) <= MAX_CONFIG_BYTES, f"{where} is larger than {MAX_CONFIG_BYTES} bytes.")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UntrustedAdapterError(f"{where} is not valid JSON: {err}") from err
    return validate_adapter_config(raw)


# ----------------------------------------------------------------------------------------------- the tensors
def expected_tensor_shapes(raw: Mapping[str, Any]) -> Optional[dict[str, tuple[int, ...]]]:
    """Tensor name -> shape that a config with ``target_shapes`` describes (``None`` without them)."""
    shapes = raw.get("target_shapes")
    if shapes is None:
        return None
    k = raw.get("latent_dim", 1)
    kept = raw.get("kept_entries") or {}
    expected: dict[str, tuple[int, ...]] = {"base_model.gradiend_encoder_bias": (k,), "base_model.gradiend_gradient_scale": ()}
    for name, shape in shapes.items():
        entries = (kept[name],) if name in kept else tuple(shape)
        prefix = f"base_model.model.{name}."
        expected[prefix + "gradiend_encoder"] = (k, *entries)
        expected[prefix + "gradiend_decoder"] = (k, *entries)
        if raw.get("decoder_bias", True):
            expected[prefix + "gradiend_decoder_bias"] = entries
        if name in kept:
            expected[prefix + INDEX_TENSOR] = (kept[name],)
    return expected


def module_of(key: str) -> Optional[tuple[str, str]]:
    """``("layers.0.mlp.up_proj", "gradiend_encoder")`` from ``base_model.model.layers.0.mlp.up_proj.gradiend_encoder``."""
    prefix = "base_model.model."
    if not key.startswith(prefix):
        return None
    module, _, tensor = key[len(prefix):].rpartition(".")
    return (module, tensor) if module else None


def _check_against_model(found: Mapping[str, tuple[int, ...]], base_model: nn.Module, where: str) -> None:
    """Without recorded ``target_shapes``: each unpruned layer tensor must match its base module's weight shape."""
    modules = dict(base_model.named_modules())
    for key, shape in found.items():
        parsed = module_of(key)
        if parsed is None or parsed[1] == INDEX_TENSOR:
            continue
        name, tensor = parsed
        module = modules.get(name)
        _expect(module is not None and getattr(module, "weight", None) is not None,
                f"{where} holds adapter tensors for module {name!r}, which this base model does not have. Load the "
                "adapter onto the base model it was trained on.")
        weight_shape = tuple(module.weight.shape)
        pruned = f"base_model.model.{name}.{INDEX_TENSOR}" in found
        own = shape if tensor == "gradiend_decoder_bias" else shape[1:]
        _expect(pruned or own == weight_shape,
                f"Tensor {key!r} in {where} has shape {shape}, which does not fit module {name!r} of this base model "
                f"(weight shape {weight_shape}). Load the adapter onto the base model it was trained on.")


def check_tensor_names(found: Mapping[str, tuple[int, ...]], raw: Mapping[str, Any], where: str,
                       base_model: Optional[nn.Module] = None,
                       expected: Optional[Mapping[str, tuple[int, ...]]] = None) -> None:
    """The tensors ``found`` (name -> shape) against ``expected`` (default: the config's `expected_tensor_shapes`;
    without ``target_shapes`` in the config, against ``base_model``'s modules). Any name that is not a GRADIEND
    tensor is refused: peft would load it into the base model."""
    for key in found:
        kind = key.rsplit(".", 1)[-1]
        _expect((kind in FLOAT_TENSORS or kind == INDEX_TENSOR) and (module_of(key) is not None or key in (
            "base_model.gradiend_encoder_bias", "base_model.gradiend_gradient_scale")),
            f"{where} holds tensor {key!r}, which is not a GRADIEND adapter tensor (tensors the config does not describe).")
    expected = expected if expected is not None else expected_tensor_shapes(raw)
    if expected is not None:
        unexpected = sorted(set(found) - set(expected))
        missing = sorted(set(expected) - set(found))
        _expect(not unexpected, f"{where} holds tensors the config does not describe: {unexpected[:5]}.")
        _expect(not missing, f"{where} lacks tensors the config describes: {missing[:5]}.")
        for key, shape in found.items():
            _expect(tuple(shape) == tuple(expected[key]),
                    f"Tensor {key!r} in {where} has shape {tuple(shape)}, but the config implies {tuple(expected[key])}.")
    elif base_model is not None:
        _check_against_model(found, base_model, where)


def check_tensor_dtypes(dtypes: Mapping[str, torch.dtype], where: str) -> None:
    """E, D, c, the encoder bias and the gradient scale are floating point; kept indices are integers. A file with
    other dtypes is crafted or damaged: loading would cast it silently."""
    for key, dtype in dtypes.items():
        kind = key.rsplit(".", 1)[-1]
        if kind == INDEX_TENSOR:
            _expect(not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool,
                    f"Tensor {key!r} in {where} holds {dtype} values: kept-entry indices are integers.")
        else:
            _expect(dtype.is_floating_point, f"Tensor {key!r} in {where} holds {dtype} values, but the adapter's "
                    f"{FLOAT_TENSORS.get(kind, 'tensor')} is floating point: a crafted or damaged file (loading would "
                    "cast it silently). Load an intact copy of the adapter.")


def check_tensor_values(tensors: Mapping[str, torch.Tensor], where: str,
                        limits: Optional[Mapping[str, int]] = None) -> None:
    """Every value: dtypes as `check_tensor_dtypes`, floating tensors finite, the gradient scale non-negative, kept
    indices unique and inside their weight (``limits``: module name -> weight entries, where known).

    Raises:
        `UntrustedAdapterError`: naming the tensor and the problem.
    """
    check_tensor_dtypes({key: tensor.dtype for key, tensor in tensors.items()}, where)
    for key, tensor in tensors.items():
        if tensor.is_floating_point():
            _expect(bool(torch.isfinite(tensor).all()), f"Tensor {key!r} in {where} holds NaN or infinite values; "
                    "merging it would corrupt the base weights. Retrain the adapter or load an intact copy.")
            if key.endswith("gradiend_gradient_scale"):
                _expect(bool((tensor >= 0).all()), f"Tensor {key!r} in {where} is negative: a gradient scale is >= 0.")
        elif tensor.numel():
            parsed = module_of(key)
            limit = (limits or {}).get(parsed[0]) if parsed else None
            _expect(int(tensor.min()) >= 0 and (limit is None or int(tensor.max()) < limit),
                    f"Tensor {key!r} in {where} holds indices outside its weight"
                    + (f" (of {limit} entries)." if limit is not None else "."))
            _expect(torch.unique(tensor).numel() == tensor.numel(),
                    f"Tensor {key!r} in {where} lists a kept entry more than once: a merge would add its shift twice. "
                    "Load an intact copy of the adapter.")


def index_limits(raw: Mapping[str, Any]) -> dict[str, int]:
    """Module name -> the number of entries of its weight, from the config's ``target_shapes``."""
    return {name: math.prod(shape) for name, shape in (raw.get("target_shapes") or {}).items()}


# ----------------------------------------------------------------------------------------- the weights digest
def _digest_entry(hasher: Any, name: str, dtype: str, shape: tuple[int, ...]) -> None:
    hasher.update(json.dumps([name, dtype, list(shape)]).encode("utf-8"))


def weights_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` over the tensors in name order: name, safetensors dtype, shape and little-endian bytes. Equal
    to `file_digest` of a safetensors file holding them; saving records it in ``adapter_config.json``
    (``weights_digest``), so that a load can tell the config's own weights from another save's."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        _digest_entry(hasher, name, _DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape))
        hasher.update(memoryview(tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()))
    return "sha256:" + hasher.hexdigest()


# -------------------------------------------------------------------------------------------- safetensors files
class SafetensorsHeader:
    """The checked header of a safetensors file open as ``fd``: ``entries`` (tensor name -> safetensors dtype, shape,
    absolute byte range)."""

    def __init__(self, fd: int, where: str) -> None:
        self.fd, self.where = fd, where
        size = os.fstat(fd).st_size
        prefix = os.pread(fd, 8, 0)
        _expect(len(prefix) == 8, f"{where} is truncated: {size} bytes, not even a safetensors header length.")
        length = int.from_bytes(prefix, "little")
        _expect(length <= MAX_HEADER_BYTES, f"{where} declares a {length}-byte header (over {MAX_HEADER_BYTES}): not a "
                "GRADIEND adapter file.")
        _expect(8 + length <= size, f"{where} is truncated: its header needs {8 + length} bytes, the file has {size}. "
                "Save the adapter again.")
        raw = _read_exactly(fd, 8, length, where)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys(where))
        except (UnicodeDecodeError, ValueError) as err:
            raise UntrustedAdapterError(f"{where} is not a readable safetensors file: its header is not JSON ({err}). "
                                        "Save the adapter again.") from err
        _expect(isinstance(header, dict), f"{where} is not a readable safetensors file: its header is not an object.")
        header.pop("__metadata__", None)
        start, self.entries = 8 + length, {}
        for name, entry in header.items():
            ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPES and isinstance(entry.get("shape"), list) \
                and len(entry["shape"]) <= 8 and all(_count(d) and d >= 0 for d in entry["shape"]) \
                and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2 \
                and all(_count(o) for o in entry["data_offsets"])
            _expect(ok, f"{where} is not a readable safetensors file: tensor {name!r} has a malformed or unsupported "
                    "entry. Save the adapter again.")
            begin, end = entry["data_offsets"]
            nbytes = math.prod(entry["shape"]) * _DTYPES[entry["dtype"]].itemsize
            _expect(0 <= begin <= end and end - begin == nbytes and start + end <= size,
                    f"{where} is truncated or malformed: tensor {name!r} does not fit in the file. Save the adapter again.")
            self.entries[name] = (entry["dtype"], tuple(entry["shape"]), start + begin, start + end)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (_, shape, _, _) in self.entries.items()}

    def dtypes(self) -> dict[str, torch.dtype]:
        return {name: _DTYPES[dtype] for name, (dtype, _, _, _) in self.entries.items()}

    def read(self, names: Optional[set[str]] = None) -> dict[str, torch.Tensor]:
        """The tensors (all, or those in ``names``), each copied from the file once (no mapping of the file)."""
        if sys.byteorder != "little":  # pragma: no cover - torch ships for no big-endian platform
            raise RuntimeError("gradiend_peft reads safetensors files (little-endian) on little-endian hosts only.")
        tensors = {}
        for name, (dtype, shape, begin, end) in self.entries.items():
            if names is None or name in names:
                buffer = bytearray(_read_exactly(self.fd, begin, end - begin, self.where))
                tensor = torch.frombuffer(buffer, dtype=_DTYPES[dtype]) if buffer else torch.empty(0, dtype=_DTYPES[dtype])
                tensors[name] = tensor.reshape(shape)
        return tensors

    @staticmethod
    def digest_of(headers: list["SafetensorsHeader"]) -> str:
        """`weights_digest` of the tensors of these files (one adapter's), streamed from the files."""
        owner = {name: header for header in headers for name in header.entries}
        hasher = hashlib.sha256()
        for name in sorted(owner):
            dtype, shape, begin, end = owner[name].entries[name]
            _digest_entry(hasher, name, dtype, shape)
            for chunk in _chunks(owner[name].fd, begin, end, owner[name].where):
                hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()


def _no_duplicate_keys(where: str):
    """A ``json`` object hook refusing a key that appears twice in one object (JSON text allows it; the last would win)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) < len(pairs):
            seen: set[str] = set()
            twice = sorted({key for key, _ in pairs if key in seen or seen.add(key)})
            _expect(False, f"{where} lists {twice[:5]} more than once.")
        return result
    return hook


def _chunks(fd: int, begin: int, end: int, where: str, size: int = 1 << 24) -> Iterator[bytes]:
    while begin < end:
        chunk = _read_exactly(fd, begin, min(size, end - begin), where)
        begin += len(chunk)
        yield chunk


def _read_exactly(fd: int, offset: int, length: int, where: str) -> bytes:
    parts, done = [], 0
    while done < length:
        part = os.pread(fd, length - done, offset + done)
        _expect(bool(part), f"{where} is truncated (it shrank while it was read). Save the adapter again.")
        parts.append(part)
        done += len(part)
    return b"".join(parts)


# ------------------------------------------------------------------------------------- the sharded adapter's index
def parse_index(data: bytes, where: str) -> dict[str, list[str]]:
    """The untrusted ``adapter_model.safetensors.index.json`` read as ``data``: shard file -> its tensor names.

    Refuses: not a JSON object with a ``weight_map`` of tensor names to file names; a name twice; a file name not of
    the form ``adapter_model-<i>-of-<N>.safetensors`` (so no path: ``../x.safetensors`` is refused); files of
    different ``N``; a shard ``1..N`` that no tensor lives in.
    """
    _expect(len(data) <= MAX_INDEX_BYTES, f"{where} is larger than {MAX_INDEX_BYTES} bytes.")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys(where))
    except (UnicodeDecodeError, ValueError) as err:
        raise UntrustedAdapterError(f"{where} is not valid JSON: {err}") from err
    _expect(isinstance(raw, dict) and isinstance(raw.get("weight_map"), dict) and raw["weight_map"],
            f"{where} must hold a JSON object with a non-empty 'weight_map' of tensor names to shard files.")
    files: dict[str, list[str]] = {}
    counts = set()
    for name, file in raw["weight_map"].items():
        match = _SHARD_FILE.fullmatch(file) if isinstance(file, str) else None
        _expect(match is not None, f"{where} maps tensor {name!r} to {file!r}, which is not a shard file name of the form "
                "adapter_model-00001-of-00002.safetensors (a file in the adapter's own folder).")
        index, count = int(match.group(1)), int(match.group(2))
        _expect(1 <= index <= count <= MAX_SHARDS, f"{where} names an impossible shard file {file!r}.")
        counts.add(count)
        files.setdefault(file, []).append(name)
    _expect(len(counts) == 1, f"{where} mixes shard files of different counts: {sorted(counts)}.")
    count = counts.pop()
    absent = [shard_file_name(i, count) for i in range(1, count + 1) if shard_file_name(i, count) not in files]
    _expect(not absent, f"{where} names no tensor in shard file(s) {absent[:3]}: an incomplete sharded adapter.")
    return {file: files[file] for file in sorted(files)}


def check_shard_headers(headers: Mapping[str, SafetensorsHeader], index: Mapping[str, list[str]], where: str) -> None:
    """Each shard file holds exactly the tensors the index gives it."""
    owner = {name: file for file, names in index.items() for name in names}
    for file, names in index.items():
        held = set(headers[file].entries)
        for name in sorted(held - set(names)):
            place = f"the index puts it in {owner[name]!r}" if name in owner else "the index does not list it"
            _expect(False, f"{where}/{file} holds tensor {name!r}, but {place}: a tampered or mixed-up sharded adapter.")
        absent = sorted(set(names) - held)
        _expect(not absent, f"{where}/{file} lacks tensors that the index puts there: {absent[:5]}.")
