"""GGUF files from Hugging Face repositories, named as Ollama names them: ``hf.co/OWNER/REPO[:QUANT]``.

huggingface_hub does the talking and the caching (its own cache, ``HF_HOME``), and reads
``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` itself. It is imported only when such a
name is resolved, so the service starts without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from inference_service.errors import ModelLoadError, ModelNotFound

HOSTS = ("hf.co", "huggingface.co")

# Without ``:QUANT``: Ollama's default first, then smaller-but-good before bigger, the
# unquantized formats last.
QUANT_PREFERENCE = (
    "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_XS", "IQ4_NL", "Q5_K_M", "Q5_K_S", "Q5_0", "Q6_K", "Q8_0",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "BF16", "F16", "F32",
)

_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class HfReference:
    repo_id: str
    quant: str | None

    @classmethod
    def parse(cls, spec: str) -> HfReference | None:
        host, _, rest = spec.partition("/")
        if host.lower() not in HOSTS:
            return None
        repo, _, quant = rest.partition(":")
        owner, _, name = repo.partition("/")
        if not (_REPO_PART.fullmatch(owner) and _REPO_PART.fullmatch(name)):
            return None
        # Ollama treats ":latest" on an hf.co name as "the default file".
        return cls(f"{owner}/{name}", quant if quant and quant.lower() != "latest" else None)


def pick_gguf(files: list[str], quant: str | None, where: str) -> str:
    """The one GGUF file ``quant`` names in ``files`` (or the preferred one without a quant)."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in PurePosixPath(f).name.lower())
    listing = f"GGUF files in {where}: {', '.join(ggufs) or 'none'}"
    if not ggufs:
        raise ModelNotFound(f"no GGUF file in {where} (files: {', '.join(sorted(files)) or 'none'})")
    if quant is not None:
        matches = _files_with_quant(ggufs, quant)
        if len(matches) == 1:
            return matches[0]
        problem = "no file" if not matches else "more than one file"
        raise ModelNotFound(f"{problem} for quantization {quant!r}; {listing}")
    if len(ggufs) == 1:
        return ggufs[0]
    for preferred in QUANT_PREFERENCE:
        matches = _files_with_quant(ggufs, preferred)
        if len(matches) == 1:
            return matches[0]
        if matches:
            break
    raise ModelNotFound(f"cannot choose a file, name one with :QUANT; {listing}")


def _files_with_quant(ggufs: list[str], quant: str) -> list[str]:
    """Files whose name holds ``quant`` as a whole word, so Q4_K matches Q4_K but not Q4_K_M;
    if none does, files that merely contain it."""
    names = {f: PurePosixPath(f).name.lower() for f in ggufs}
    word = re.compile(rf"(?<![a-z0-9]){re.escape(quant.lower())}(?![a-z0-9_])")
    whole = [f for f in ggufs if word.search(names[f])]
    return whole or [f for f in ggufs if quant.lower() in names[f]]


def download(reference: HfReference, progress: Callable[[str], None]) -> tuple[Path, str]:
    """Fetches (or finds in the hub cache) the chosen GGUF file: its path and its name in the repo."""
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.utils import RepositoryNotFoundError
    except ImportError as exc:
        raise ModelLoadError(f"Hugging Face models need huggingface_hub (pip install '.[engine]'): {exc}") from exc

    repo_url = f"{constants.ENDPOINT.rstrip('/')}/{reference.repo_id}"
    try:
        files = huggingface_hub.HfApi().list_repo_files(reference.repo_id)
        where = repo_url
    except RepositoryNotFoundError as exc:
        # The library's message is a paragraph of advice; what matters fits in a line.
        raise ModelNotFound(f"no Hugging Face repo {repo_url} (a private or gated repo needs HF_TOKEN)") from exc
    except Exception as exc:  # HF_HUB_OFFLINE, or the hub unreachable (its HTTP library's own error types)
        files = _cached_files(reference.repo_id)
        if not files:
            raise ModelLoadError(f"cannot list {repo_url} and nothing of it is cached: {_one_line(exc)}") from exc
        where = f"the Hugging Face cache of {reference.repo_id}"
    filename = pick_gguf(files, reference.quant, where)
    progress(f"pulling {filename} from {where}")
    try:
        path = huggingface_hub.hf_hub_download(reference.repo_id, filename)
    except Exception as exc:  # huggingface_hub's and its HTTP library's errors alike
        raise ModelLoadError(f"could not download {filename} from {repo_url}: {_one_line(exc)}") from exc
    return Path(path), filename


def _cached_files(repo_id: str) -> list[str]:
    """Files of ``repo_id`` at ``main`` in the hub cache (what is usable offline)."""
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir()
    except Exception:  # no cache directory yet (CacheNotFound) or an unreadable one
        return []
    for repo in cache.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            for revision in repo.revisions:
                if "main" in revision.refs:
                    return [file.file_path.relative_to(revision.snapshot_path).as_posix() for file in revision.files]
    return []


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
