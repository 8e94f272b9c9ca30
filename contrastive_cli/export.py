"""Hand a checkpoint's backbone to other tools: its weights (safetensors, torchvision's or timm's key names), a
TorchScript or ONNX program, or the features of a dataset (safetensors or CSV).

Every artefact is written atomically and carries what a user needs to feed it (input size, normalisation) and
where it came from (the checkpoint's sha256, method, backbone, data), as safetensors metadata, a TorchScript
extra file or ONNX metadata_props. The expected input is the evaluations' view: float32 NCHW, 3 channels, side
`image_size`, RGB in [0, 1] normalised per channel as (x - mean) / std.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .errors import UserError
from .evaluate import features, load_encoder, open_data
from .models import TIMM_PREFIX
from .spec import ExportSpec
from .runtime import default_workers, pick_device

EXPORT_FORMAT = "contrastive-export"
EXPORT_VERSION = 1
SUFFIXES = {"safetensors": ".backbone.safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
EXTRA_FILE = "contrastive.json"  # the TorchScript extra file holding the metadata
INPUT_NAME, OUTPUT_NAME = "images", "features"
ONNX_EXTRA = "pip install 'contrastive[onnx]'"


def export(spec: ExportSpec) -> dict:
    """Write the artefact `spec` asks for; returns a summary (what was written, where, and how to feed it)."""
    t0 = time.perf_counter()
    source = ckpt.resolve_path(spec.checkpoint)
    default = default_out(source, spec)
    out = spec.out or default
    ckpt.check_output(out, "--out", (source,), "export", spec.force, create_folders=False)
    if spec.format == "onnx":
        require_onnx()
    if spec.map:  # a missing package or an unwritable map path fails before the features are computed
        from .embedding_map import require_map
        require_map(spec.map)
        ckpt.check_output(map_path(spec, out), "--map-out", (source,), "export", spec.force, create_folders=False)
    device = pick_device(distributed.device_for(spec.runtime.device)) if spec.embeddings else torch.device("cpu")
    distributed.init(device)  # under torchrun (--embeddings only): each process embeds its share of the images
    backbone, meta = load_encoder(source, device)
    info = describe(meta, source, "embeddings" if spec.embeddings else "backbone")
    if spec.embeddings:
        summary = write_embeddings(spec, backbone, meta, info, out, device)
    else:
        summary = write_backbone(spec.format, backbone.cpu(), info, out)
    size = distributed.on_main(lambda: out.stat().st_size)  # written by rank 0
    return {"checkpoint": str(source), "format": spec.format, "out": str(out), "bytes": size,
            "backbone": meta["backbone"]["name"], "feature_dim": meta["feature_dim"],
            "image_size": meta["image_size"], "normalize": meta["normalize"], **summary,
            "seconds": round(time.perf_counter() - t0, 2)}


# ---- output path ----------------------------------------------------------------------------------


def default_out(source: Path, spec: ExportSpec) -> Path:
    """Next to the checkpoint: checkpoint.safetensors -> checkpoint.onnx, checkpoint.embeddings.test.csv, ..."""
    stem = source.name.removesuffix(".safetensors")
    suffix = f".embeddings.{spec.data.split}.{spec.format}" if spec.embeddings else SUFFIXES[spec.format]
    return source.with_name(stem + suffix)


def map_path(spec: ExportSpec, out: Path) -> Path:
    """--map's PNG: --map-out, else next to the embeddings file, e.g. checkpoint.embeddings.test.map.png."""
    return spec.map_out or out.with_name(out.name.rsplit(".", 1)[0] + ".map.png")


def write(out: Path, writer: Callable[[str], object]) -> None:
    """Atomic write (temp file + rename, as checkpoints); OS errors become one clear message."""
    try:
        ckpt.atomic_write(out, writer, mkdir=False)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError "I/O error: ..."
        reason = getattr(err, "strerror", None) or str(err).removeprefix("Error while serializing: ")
        raise UserError(f"Could not write {out} ({reason})",
                        "check the free disk space and the folder's permissions, or choose another --out") from None


# ---- metadata -------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(meta: dict, source: Path, kind: str) -> dict:
    """What every artefact records: how to feed the backbone and where it came from (values JSON-able)."""
    size, norm = meta["image_size"], meta["normalize"]
    return {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "kind": kind,
        "backbone": meta["backbone"], "feature_dim": meta["feature_dim"], "image_size": size, "normalize": norm,
        "input": f"float32 [N, 3, {size}, {size}] (NCHW), RGB in [0, 1] normalised per channel as "
                 f"(x - mean) / std with mean {norm['mean']} and std {norm['std']}; gray images repeated to 3 "
                 f"channels; output [N, {meta['feature_dim']}] pooled features",
        "source": {"checkpoint": str(source), "sha256": sha256(source), "kind": meta.get("kind"),
                   "method": meta.get("method"), "step": meta.get("step"), "data": meta.get("data")},
        "versions": ckpt.versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"timm": timm_loading(meta["backbone"])} if meta["backbone"].get("timm") else {}),
    }


def timm_loading(backbone: dict) -> dict:
    """How a timm backbone's weights load with timm alone: timm.create_model(model, **kwargs), then
    load_state_dict(strict=True)."""
    model = backbone["name"].removeprefix(TIMM_PREFIX)
    kwargs = {**backbone["kwargs"], "num_classes": 0}
    call = ", ".join([repr(model)] + [f"{k}={v!r}" for k, v in kwargs.items()])
    return {"model": model, "kwargs": kwargs, "load": f"timm.create_model({call}).load_state_dict("
            "safetensors.torch.load_file(PATH), strict=True)"}


def as_strings(info: dict) -> dict[str, str]:
    """String-to-string metadata (safetensors, ONNX): strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()}


# ---- the backbone ---------------------------------------------------------------------------------


def write_backbone(fmt: str, backbone: nn.Module, info: dict, out: Path) -> dict:
    backbone.eval()
    if fmt == "safetensors":
        # Plain state_dict keys (no "backbone." prefix): load_state_dict(strict=True) into the torchvision model
        # with fc = Identity (or build_backbone for small_cnn; timm.create_model(name, num_classes=0, **kwargs)
        # for timm:NAME, as info["timm"] says), BN buffers included.
        state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
        write(out, lambda tmp: save_file(state, tmp, metadata=as_strings(info)))
        return {"tensors": len(state)}
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch.jit is deprecated upstream; it is still what many runtimes load
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = torch.jit.script(backbone)  # scripted, not traced: no batch size or image size baked in
            # serialised in memory, then written by Python: torch.jit.save aborts the process on a full disk
            buffer = io.BytesIO()
            torch.jit.save(program, buffer, _extra_files={EXTRA_FILE: json.dumps(info)})
            write(out, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
        return {"extra_file": EXTRA_FILE}
    return to_onnx(backbone, info, out)


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401 - torch.onnx's exporter needs both
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(f"Exporting to ONNX needs the Python package '{err.name or 'onnxscript'}', which is not "
                        "installed",
                        f"install the ONNX extra ({ONNX_EXTRA}), or export --format torchscript or safetensors"
                        ) from None


def to_onnx(backbone: nn.Module, info: dict, out: Path) -> dict:
    """torch.export-based exporter (torch's default and maintained path; the TorchScript-based one is
    deprecated), batch axis dynamic, image side fixed at the checkpoint's size, weights inside the file."""
    size = info["image_size"]
    example = torch.randn(2, 3, size, size)  # 2, not 1: a batch of 1 would be specialised as a constant
    try:
        program = torch.onnx.export(backbone, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; the message is what helps
        raise UserError(f"torch.onnx.export failed for this backbone ({type(err).__name__}: {err})",
                        "export --format torchscript or safetensors instead") from None
    program.model.metadata_props.update(as_strings(info))
    program.model.doc_string = f"contrastive backbone. Input '{INPUT_NAME}': {info['input']}."
    write(out, lambda tmp: program.save(tmp, external_data=False))
    return {"opset": program.model.opset_imports.get("", None), "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME}


# ---- embeddings -----------------------------------------------------------------------------------


def write_embeddings(spec: ExportSpec, backbone: nn.Module, meta: dict, info: dict, out: Path,
                     device: torch.device) -> dict:
    """Features of the centre view of every readable image of the split, with dataset positions, labels and
    file paths where the data has them."""
    d = spec.data
    data = open_data(d, meta, d.split, spec.runtime.seed, d.subset)
    size = d.image_size or meta["image_size"]
    feats, labels, rows = features(backbone, data, size, meta["normalize"], device, spec.runtime.batch_size,
                                   default_workers(spec.runtime.workers))
    index = rows if data.index is None else data.index[rows]  # positions in the whole split (before --subset)
    files = None if data.files is None else [data.files[i] for i in rows.tolist()]
    info = {**info, "image_size": size,
            "data": {"name": data.name, "split": d.split, "fingerprint": data.fingerprint, "images": len(rows),
                     "skipped_files": len(data.skipped)},
            "classes": data.classes}
    if spec.format == "csv":
        distributed.on_main(lambda: write(out, lambda tmp: write_csv(tmp, feats, index, labels, data.classes, files)))
    else:
        tensors = {"features": feats, "indices": index}
        if labels is not None:
            tensors["labels"] = labels
        if files is not None:  # relative to one root keeps the header small (safetensors caps it at 100 MB)
            root = os.path.commonpath([os.path.dirname(f) for f in files])
            info |= {"root": root, "files": [os.path.relpath(f, root) for f in files]}
        distributed.on_main(lambda: write(out, lambda tmp: save_file(tensors, tmp, metadata=as_strings(info))))
    drawn = None
    if spec.map:
        from .embedding_map import NAMES, draw_map
        drawn = map_path(spec, out)
        title = (f"{NAMES[spec.map]} of {len(rows)} embeddings · {data.name.rsplit(':', 1)[0]} {d.split} · "
                 f"{meta.get('method') or meta.get('kind')} {meta['backbone']['name']} · {Path(info['source']['checkpoint']).name}")
        distributed.on_main(lambda: draw_map(spec.map, feats, labels, data.classes, drawn, title, spec.runtime.seed, write))
    return {"image_size": size, "data": data.name.rsplit(":", 1)[0], "split": d.split, "images": len(rows),
            "labels": labels is not None, "files": files is not None, "skipped_files": len(data.skipped),
            "map": None if drawn is None else str(drawn)}


def write_csv(path: str, features: torch.Tensor, index: torch.Tensor, labels: Optional[torch.Tensor],
              classes: Optional[list[str]], files: Optional[list[str]]) -> None:
    """One row per image: index, [label, class], [file], f0 .. f{D-1} (float32 values, 9 significant digits:
    they read back exactly)."""
    header = ["index"] + (["label", "class"] if labels is not None else []) + (["file"] if files is not None else [])
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header + [f"f{j}" for j in range(features.shape[1])])
        for start in range(0, len(features), 4096):  # tolist() a chunk at a time: Python floats are 24 bytes each
            for i, row in enumerate(features[start:start + 4096].tolist(), start):
                lead = [int(index[i])]
                if labels is not None:
                    y = int(labels[i])
                    lead += [y, classes[y] if classes and 0 <= y < len(classes) else ""]
                if files is not None:
                    lead.append(files[i])
                out.writerow(lead + [f"{v:.9g}" for v in row])
