"""Checkpoints: safetensors only, written atomically, with the run spec and provenance in the metadata.

Tensor prefixes (see docs/checkpoints.md):
  backbone.*   backbone weights with torchvision key names (readable with `safetensors` alone)
  method.*     everything else of the method module: heads, momentum encoders, the MoCo queue
  optim.*      optimiser state (momentum buffers, Adam moments), by parameter index
  rng.*        random-number-generator states
  probe.*      a linear probe's classifier
Metadata values are strings; structured ones are JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import UserError

FORMAT = "contrastive-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"


def versions() -> dict[str, str]:
    import torchvision
    from . import __version__
    return {"contrastive": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors + metadata to `path` atomically (see atomic_write); a failed write is a UserError."""
    path = Path(path)
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "versions": json.dumps(versions())}
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    except (OSError, SafetensorError) as err:  # a full disk, a quota, an I/O error (safetensors reports them as
        # SafetensorError "I/O error: ..."): the temp file is gone, the old checkpoint intact
        needed = sum(v.numel() * v.element_size() for v in tensors.values()) / 2**20
        intact = " The previous file there is intact." if path.exists() else ""
        reason = getattr(err, "strerror", None) or str(err).removeprefix("Error while serializing: ")
        raise UserError(f"Could not write {path} ({reason}); it needs about {needed:.1f} MiB.{intact}",
                        "free disk space (or choose an output on another disk) and run again"
                        + (f", continuing the run with --resume {path.parent}" if path.name == CHECKPOINT_NAME else "")) from None


def atomic_write(path: Path, write: Callable[[str], Any], mkdir: bool = True) -> Path:
    """Run `write(tmp)` on a temp file in `path`'s folder, fsync it, then rename it over `path`: readers and
    crashes see the old file or the new one, never a partial one."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for secrets; a checkpoint is an ordinary output
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_path(path: Path) -> Path:
    """Accept a checkpoint file or a run directory holding one."""
    path = Path(path)
    if path.is_dir():
        candidate = path / CHECKPOINT_NAME
        if not candidate.exists():
            raise UserError(f"The folder {path} holds no {CHECKPOINT_NAME}",
                            "pass a .safetensors checkpoint written by `contrastive pretrain` or its run directory")
        return candidate
    if not path.exists():
        raise UserError(f"Checkpoint {path} does not exist",
                        "pass a .safetensors checkpoint written by `contrastive pretrain` or its run directory")
    return path


def check_output(out: Path, flag: str, inputs: tuple[Path, ...], writes: str, force: bool = False,
                 create_folders: bool = True) -> None:
    """Before any work: the output `out` (given by `flag`) can be written (its missing folders created, if
    `create_folders`), is none of the `inputs`, and replaces no checkpoint of a run unless `force`. A rerun of the
    same command may replace its own earlier output (the same kind `writes`, recorded from the same input)."""
    out = Path(out)
    for source in inputs:
        if out.resolve() == Path(source).resolve() or (out.exists() and os.path.samefile(out, source)):
            raise UserError(f"{flag} {out} is the checkpoint this command reads; writing there would destroy it",
                            f"choose another {flag} (the default, without {flag}, is a new file next to it)")
    existing = checkpoint_kind(out)
    if existing and not force:
        meta = read_meta(out, kinds=(existing,))
        recorded = meta.get("source_checkpoint") or (meta.get("source") or {}).get("path")
        rerun = existing == writes and recorded and any(Path(recorded).resolve() == Path(s).resolve() for s in inputs)
        if not rerun:
            raise UserError(f"{flag} {out} is the {existing} checkpoint of another run, which this would overwrite",
                            f"choose another {flag}, or pass --force to replace it")
    if out.is_dir():
        raise UserError(f"The output {out} is a folder", f"give {flag} a file name inside it, e.g. {flag} "
                        f"{out / 'output.safetensors'}")
    folder = out.parent
    if not folder.exists() and not create_folders:
        raise UserError(f"The folder {folder} for the output {out.name} does not exist",
                        f"create it first (mkdir -p {folder}) or choose another {flag}")
    while not folder.exists():  # the folders that the write will create: the first existing one must take them
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder, so {out} cannot be written", f"choose another {flag}")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"The folder {folder} is not writable, so {out.name} cannot be written there",
                        f"pass {flag} with a path in a folder you can write to")


def checkpoint_kind(path: Path) -> Optional[str]:
    """The kind of the contrastive checkpoint at `path` (pretrain, transfer, linear-probe), or None for anything
    else (no file, another format)."""
    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    return raw.get("kind") if raw.get("format") == FORMAT else None


def read_meta(path: Path, kinds: tuple[str, ...] = ("pretrain",)) -> dict[str, Any]:
    """Metadata of a checkpoint, JSON values decoded; clear errors for anything that is not ours."""
    path = resolve_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err}); it may be truncated or of another format",
                        "pass a .safetensors checkpoint written by `contrastive pretrain`; nothing else is loaded, "
                        "and pickled files (.pt, .pth, .ckpt) never are") from None
    if raw.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not a contrastive checkpoint (no '{FORMAT}' metadata)",
                        "pass a checkpoint written by `contrastive pretrain`")
    if int(raw.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {raw['format_version']}, newer than this version reads "
                        f"({FORMAT_VERSION})", "upgrade contrastive")
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    if meta.get("kind") not in kinds:
        raise UserError(f"{path} is a {meta.get('kind')} checkpoint, but this command needs a "
                        f"{' or '.join(kinds)} checkpoint", "pass the checkpoint written by `contrastive pretrain`")
    meta["path"] = str(path)
    return meta


def load(path: Path, kinds: tuple[str, ...] = ("pretrain",), prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors whose names start with `prefix`, metadata) of a checkpoint; never unpickles."""
    meta = read_meta(path, kinds)
    try:
        with safe_open(meta["path"], framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{meta['path']} could not be read ({err}); it may be truncated",
                        "use an intact checkpoint (the run directory's checkpoint.safetensors is replaced atomically)") from None
    return tensors, meta


def strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:16]


# ---- a method's training state ------------------------------------------------------------------


def encoder_prefix(method: nn.Module) -> str:
    """Where the exported encoder sits in the method's state dict ('backbone.', or e.g. the teacher's name)."""
    encoder = method.exported_encoder()
    return next(name for name, module in method.named_modules() if module is encoder) + "."


def state_tensors(method: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """backbone.* the exported encoder (torchvision keys for a plain ResNet), method.* the rest of the method."""
    prefix = encoder_prefix(method)
    tensors = {f"backbone.{k}": v for k, v in method.exported_encoder().state_dict().items()}
    tensors.update({f"method.{k}": v for k, v in method.state_dict().items() if not k.startswith(prefix)})
    for i, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optim.{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors


def load_state(method: nn.Module, optimizer: Optional[torch.optim.Optimizer], tensors: dict[str, torch.Tensor]) -> None:
    prefix = encoder_prefix(method)
    state = {prefix + k: v for k, v in strip(tensors, "backbone.").items()}
    state.update(strip(tensors, "method."))
    method.load_state_dict(state, strict=True)
    if optimizer is not None:
        saved = optimizer.state_dict()
        per_param: dict[int, dict] = {}
        for key, value in strip(tensors, "optim.").items():
            i, name = key.split(".", 1)
            per_param.setdefault(int(i), {})[name] = value
        saved["state"] = per_param
        optimizer.load_state_dict(saved)
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
