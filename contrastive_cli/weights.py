"""--init: the pretrained weights a new run's backbone starts from. A user's file is read as safetensors only (a
pickle can run code); 'torchvision' and 'timm' read those libraries' pretrained weights from their local caches
and never download. Every key of the backbone must be in the file, with its shape: a partial load would train a
half-random network without a word."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from . import checkpoint as ckpt
from .errors import UserError
from .export import sha256
from .models import TIMM_PREFIX, require_timm
from .spec import TORCHVISION_WEIGHTS

CLASSIFIERS = ("fc", "head", "heads")  # torchvision's and timm's classifiers: the encoder has none, so dropped
FIX = "pass weights of the same architecture (--init PATH.safetensors), or drop --init"


def initialise(backbone: nn.Module, init: str, info: dict) -> dict:
    """Load --init `init` into `backbone`, built from the record `info` (backbone_info); returns what the
    checkpoint records: the source, the file read and its sha256."""
    name = info["name"]
    if init == "torchvision":
        path, weights = torchvision_file(name)
        state = read_cached(path)
    elif init == "timm":
        path, weights = timm_file(name.removeprefix(TIMM_PREFIX))
        state = read_cached(path)
    else:
        path, weights = Path(init).expanduser(), None
        state = read_safetensors(path)
    if name.startswith(TIMM_PREFIX):
        state = timm_conversion(backbone, state, path)
    load_matching(backbone, state, f"--init {init}" + (f" ({path})" if init in ("torchvision", "timm") else ""))
    return {"source": init, "file": str(path.resolve()), "sha256": sha256(path),
            **({"weights": weights} if weights else {})}


# ---- where the weights are ------------------------------------------------------------------------


def cache_file(url: str) -> Path:
    """Where torch.hub (torchvision's and timm's URL weights) keeps the download of `url`; TORCH_HOME moves it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_file(name: str) -> tuple[Path, str]:
    import torchvision
    model = TORCHVISION_WEIGHTS[name]
    weights = torchvision.models.get_model_weights(model).DEFAULT
    path = cache_file(weights.url)
    if not path.is_file():
        raise UserError(f"--init torchvision: {weights} ({name}'s ImageNet weights) is not in the local cache: "
                        f"{path} does not exist, and nothing is downloaded",
                        f"download it once where there is internet (python -c \"import torchvision; "
                        f"torchvision.models.{model}(weights='DEFAULT')\") and copy it there (TORCH_HOME sets the "
                        "folder), or pass a weights file: --init PATH.safetensors")
    return path, str(weights)


def timm_file(name: str) -> tuple[Path, str]:
    """The cached file of timm's default pretrained weights of `name` (its tag's, if it has one): the Hugging Face
    hub cache, then torch.hub's, where timm.create_model(name, pretrained=True) would have put them."""
    timm = require_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"--init timm: timm has no pretrained weights for {name}",
                        "pass a weights file (--init PATH.safetensors), or choose a model with pretrained weights "
                        "(timm.list_models(pretrained=True))")
    looked = []
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache
        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found), cfg.hf_hub_id
        looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE} for {repo}")
    if cfg.url and cfg.url.endswith((".pth", ".bin", ".safetensors")):  # not .npz: timm converts those itself
        path = cache_file(cfg.url)
        if path.is_file():
            return path, cfg.url
        looked.append(str(path))
    raise UserError(f"--init timm: the pretrained weights of timm's {name} are not in the local cache (looked in "
                    f"{' and '.join(looked) or 'nowhere: timm has them in a format it converts itself'}), and "
                    "nothing is downloaded",
                    f"download them once where there is internet (python -c \"import timm; timm.create_model("
                    f"'{name}', pretrained=True)\") with the same HF_HOME / TORCH_HOME, or pass a weights file: "
                    "--init PATH.safetensors")


# ---- reading ------------------------------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A user's weights file; a contrastive checkpoint gives its backbone.* tensors."""
    if not path.is_file():
        raise UserError(f"--init {path}: no such file", "pass an existing .safetensors weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"--init {path} is not a readable safetensors file ({err})",
                        "pass a .safetensors weights file; convert a PyTorch state dict once with python -c "
                        "\"import torch, safetensors.torch as st; st.save_file(torch.load('w.pth', "
                        "weights_only=True), 'w.safetensors')\"") from None
    if meta.get("format") == ckpt.FORMAT:  # a run's checkpoint: continue from its encoder
        state = ckpt.strip(state, "backbone.")
    return state


def read_cached(path: Path) -> dict[str, torch.Tensor]:
    """A file torchvision or timm downloaded: safetensors, or a state dict that torch.load reads with
    weights_only=True (tensors only, no code), as those libraries load it."""
    try:
        if path.suffix == ".safetensors":
            return read_safetensors(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"The cached weights {path} could not be read ({err}); the download may be incomplete",
                        "delete the file and download it again, or pass a weights file: --init PATH.safetensors"
                        ) from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"The cached weights {path} are not a plain state dict",
                        "pass a weights file instead: --init PATH.safetensors")
    return state


def timm_conversion(backbone: nn.Module, state: dict, path: Path) -> dict:
    """timm's own checkpoint conversion of the model's family where it has one (timm.create_model(pretrained=True)
    applies it): original-format keys renamed, position embeddings and patch kernels resampled to the model's grid,
    so e.g. 224 px weights start a ViT on 32 px views. Keys already in timm's format pass through."""
    convert = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        try:
            return convert(state, backbone)
        except TypeError:  # the older one-argument form
            return convert(state)
    except Exception as err:  # noqa: BLE001 - a foreign file breaks a converter in any way
        raise UserError(f"timm's conversion of {path} for this model failed ({type(err).__name__}: {err})",
                        FIX) from None


def load_matching(backbone: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict(strict=True) after dropping the classifier; a mismatch is one UserError listing a few keys."""
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own or k.split(".")[0] not in CLASSIFIERS}
    for k in own:  # weights saved before BN counted its batches (torchvision's ResNets) start it at 0, as torch does
        if k.endswith("num_batches_tracked"):
            state.setdefault(k, own[k])
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {list(state[k].shape)} (the model's: {list(own[k].shape)})" for k in own
                if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        parts = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})" for what, keys in
                 (("keys missing", missing), ("unexpected keys", unexpected), ("of another shape", reshaped)) if keys]
        raise UserError(f"{where} does not fit the backbone: {'; '.join(parts)}", FIX)
    backbone.load_state_dict(state, strict=True)
