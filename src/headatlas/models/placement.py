"""Models larger than one device: ``device_map`` / ``max_memory`` / ``offload_folder`` through accelerate.

:func:`headatlas.load` passes these to transformers' ``from_pretrained`` (folders and hub ids: the
weights go straight to their devices, the whole model is never held in CPU memory), or dispatches an
already built model with accelerate (GGUF files, bundled names, ``(model, tokenizer)`` pairs). A
device map names, per module, ``"cpu"``, ``"disk"`` (weights read from ``offload_folder`` on use),
a GPU index or ``"cuda:N"``; a string asks accelerate to plan one (``"auto"``, ``"balanced"``,
``"balanced_low_0"``, ``"sequential"``) within ``max_memory``.

Offloaded weights sit on the ``meta`` device between uses; :func:`module_device` answers where a
module actually runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..errors import InputError

PLANS = ("auto", "balanced", "balanced_low_0", "sequential")
DeviceMap = str | Mapping[str, int | str | torch.device]


@dataclass(frozen=True)
class Placement:
    """Checked ``device_map`` arguments (``device_map`` None: one device, the old path)."""

    device_map: str | dict[str, int | str] | None = None
    max_memory: dict[int | str, int | str] | None = None
    offload_folder: str | None = None

    @property
    def active(self) -> bool:
        return self.device_map is not None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        if not self.active:
            return {}
        kw: dict[str, Any] = {"device_map": self.device_map}
        if self.max_memory is not None:
            kw["max_memory"] = self.max_memory
        if self.offload_folder is not None:
            kw["offload_folder"] = self.offload_folder
        return kw


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_target(module: str, target: Any) -> int | str:
    """One device-map value -> what accelerate takes (int GPU index, "cpu", "disk", "cuda:N", "mps")."""
    where = f"device_map[{module!r}] = {target!r}"
    if isinstance(target, bool) or not isinstance(target, (int, str, torch.device)):
        raise InputError(f"{where}: a device must be a GPU index, 'cpu', 'disk' or 'cuda:N', "
                         f"got {type(target).__name__}")
    if isinstance(target, int):
        if target < 0:
            raise InputError(f"{where}: a GPU index must be >= 0")
        dev = torch.device("cuda", target)
    elif isinstance(target, str) and target.strip() == "disk":
        return "disk"
    else:
        try:
            dev = torch.device(target.strip() if isinstance(target, str) else target)
        except (RuntimeError, ValueError, TypeError):
            raise InputError(f"{where}: unknown device; use a GPU index, 'cpu', 'disk' or 'cuda:N'") from None
    if dev.type == "meta":
        raise InputError(f"{where}: 'meta' holds no weights; offload to 'disk' (with offload_folder) or 'cpu' instead")
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "cuda":
        n = _gpu_count()
        index = 0 if dev.index is None else dev.index
        if index >= n:
            seen = "no CUDA GPU" if n == 0 else f"only {n} CUDA GPU(s) (0..{n - 1})"
            raise InputError(f"{where}: this machine has {seen}; place modules on 'cpu' or 'disk' instead")
        return index if isinstance(target, int) else f"cuda:{index}"
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{where}: MPS is not available on this machine; use 'cpu'")
        return "mps"
    raise InputError(f"{where}: device type {dev.type!r} is not supported; use a GPU index, 'cpu', 'disk' or 'cuda:N'")


def _check_memory(max_memory: Any) -> dict[int | str, int | str]:
    from accelerate.utils import convert_file_size_to_int

    if not isinstance(max_memory, Mapping) or not max_memory:
        raise InputError(f"max_memory must be a dict such as {{0: '70GiB', 1: '70GiB', 'cpu': '200GiB'}}, "
                         f"got {type(max_memory).__name__} {max_memory!r:.60}")
    out: dict[int | str, int | str] = {}
    for key, size in max_memory.items():
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise InputError(f"max_memory key {key!r}: use a GPU index, 'cpu', 'mps' or 'disk'")
        if isinstance(key, str) and key.startswith("cuda:") and key[5:].isdigit():
            key = int(key[5:])
        if isinstance(key, int) and not 0 <= key < max(_gpu_count(), 1) and _gpu_count():
            raise InputError(f"max_memory key {key}: there are only {_gpu_count()} CUDA GPU(s)")
        if isinstance(key, str) and key not in ("cpu", "mps", "disk"):
            raise InputError(f"max_memory key {key!r}: use a GPU index, 'cpu', 'mps' or 'disk'")
        try:
            if isinstance(size, bool) or convert_file_size_to_int(size) <= 0:
                raise ValueError
        except (ValueError, TypeError, AttributeError, OverflowError):
            raise InputError(f"max_memory[{key!r}] = {size!r:.40}: give bytes (an int) or a size such as '20GiB'") from None
        out[key] = size
    return out


def check_placement(device_map: Any = None, max_memory: Any = None, offload_folder: Any = None,
                    device: Any = None) -> Placement:
    """Validate :func:`headatlas.load`'s placement arguments (InputError naming the fix)."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise InputError("max_memory and offload_folder only apply with device_map; pass device_map='auto' "
                             "(or a dict of module -> device) as well")
        return Placement()
    if device is not None:
        raise InputError("pass either device or device_map, not both: device_map already places every module")
    if isinstance(device_map, str):
        dm: str | dict[str, int | str] = device_map.strip()
        if dm not in PLANS:
            raise InputError(f"device_map={device_map!r}: use one of {', '.join(PLANS)} or a dict of "
                             "module name -> device (GPU index, 'cpu', 'disk')")
    elif isinstance(device_map, Mapping):
        if not device_map:
            raise InputError("device_map is an empty dict; give module name -> device, or device_map='auto'")
        dm = {}
        for module, target in device_map.items():
            if not isinstance(module, str):
                raise InputError(f"device_map key {module!r}: keys are module names such as 'model.layers.3'")
            dm[module] = _check_target(module, target)
    else:
        raise InputError(f"device_map must be 'auto' (or {', '.join(PLANS[1:])}) or a dict of module name -> "
                         f"device, got {type(device_map).__name__}")
    memory = _check_memory(max_memory) if max_memory is not None else None
    folder = None
    if offload_folder is not None:
        from ..outdir import check_folder_path

        if not isinstance(offload_folder, (str, os.PathLike)) or not str(offload_folder).strip():
            raise InputError(f"offload_folder must be a folder path, got {offload_folder!r}")
        folder = str(check_folder_path(offload_folder, what="offload_folder"))   # a file, under a file, /proc...
    if isinstance(dm, dict) and "disk" in dm.values() and folder is None:
        raise InputError("device_map sends modules to 'disk' but no offload_folder was given; pass "
                         "offload_folder=<a folder with room for those weights>")
    return Placement(device_map=dm, max_memory=memory, offload_folder=folder)


def check_covers(model: nn.Module, device_map: Mapping[str, Any]) -> None:
    """Every key names a module of ``model`` and every parameter falls under some key (InputError)."""
    modules = dict(model.named_modules())
    unknown = [k for k in device_map if k not in modules]
    if unknown:
        sample = ", ".join(n for n in list(modules)[1:6])
        raise InputError(f"device_map names modules the model does not have: {', '.join(map(repr, unknown[:5]))}; "
                         f"module names look like {sample}")
    keys = list(device_map)
    missing = [n for n, _ in model.named_parameters()
               if not any(k == "" or n == k or n.startswith(k + ".") for k in keys)]
    if missing:
        raise InputError(f"device_map places no device for {len(missing)} parameter(s), e.g. {missing[0]!r}; "
                         "add its module (or a parent) to the map")


def check_covers_config(folder_or_id: str, device_map: Mapping[str, Any], **kw: Any) -> None:
    """:func:`check_covers` on an empty (meta) model built from the config, before any weights load.
    Silently skipped where the config itself cannot be read here (from_pretrained then says why)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder_or_id, **kw)
        with init_empty_weights():
            empty = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - a best-effort early check only
        return
    check_covers(empty, device_map)


def dispatch(model: nn.Module, placement: Placement, dtype: torch.dtype) -> nn.Module:
    """Place an already built model by ``placement`` with accelerate (hooks move activations between
    devices; "disk" weights are written to ``offload_folder`` and read back on use)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = sorted(getattr(model, "_no_split_modules", None) or [])
    if isinstance(placement.device_map, str):
        memory = placement.max_memory
        if placement.device_map != "sequential":
            memory = get_balanced_memory(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype,
                                         low_zero=placement.device_map == "balanced_low_0")
        dmap = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype)
    else:
        dmap = dict(placement.device_map or {})
        check_covers(model, dmap)
    if "disk" in dmap.values() and placement.offload_folder is None:
        raise InputError("the planned device map offloads modules to 'disk' (max_memory is too small for the rest); "
                         "pass offload_folder=<a folder>, or raise max_memory")
    if placement.offload_folder is not None:
        from ..outdir import prepare_out

        prepare_out(placement.offload_folder, what="offload_folder")   # OutputError when it cannot be written
    model = dispatch_model(model, dmap, offload_dir=placement.offload_folder)
    model.hf_device_map = dmap
    return model


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` runs: its accelerate hook's execution device when dispatched (offloaded
    weights are on ``meta`` between uses), else the device of its first real parameter or buffer."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is None and hook is not None:  # a SequentialHook: the first of its hooks that names a device
        for h in getattr(hook, "hooks", ()):
            dev = getattr(h, "execution_device", None)
            if dev is not None:
                break
    if dev is not None:
        return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta":
            return t.device
    for sub in module.modules():
        if sub is not module and getattr(sub, "_hf_hook", None) is not None:
            return module_device(sub)
    return torch.device("cpu")


def named_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.named_parameters()`` (same names, order and de-duplication of tied weights), with
    offloaded weights (``meta`` between uses) read back through accelerate's hooks one module at a
    time, so never more than one module's weights are materialised at once."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in own)
        if not own:
            continue
        prefix = f"{module_name}." if module_name else ""
        if any(p.device.type == "meta" for _, p in own) and getattr(module, "_hf_hook", None) is not None:
            from accelerate.utils import align_module_device

            names = [n for n, _ in own]
            with align_module_device(module):
                for name in names:
                    yield prefix + name, getattr(module, name)
        else:
            for name, p in own:
                yield prefix + name, p


def pin(module: nn.Module) -> bool:
    """Keep an offloaded module's own weights on its execution device for good (False when it was not
    offloaded). Used for the readout (final norm, unembedding), whose weights detectors read directly."""
    hook = getattr(module, "_hf_hook", None)
    own = list(module.named_parameters(recurse=False))
    if hook is None or not any(p.device.type == "meta" for _, p in own):
        return False
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_module
    from accelerate.utils import align_module_device, set_module_tensor_to_device

    device = module_device(module)
    with align_module_device(module):
        values = {name: getattr(module, name).detach().clone() for name, _ in own}
    remove_hook_from_module(module)
    for name, value in values.items():
        set_module_tensor_to_device(module, name, device, value=value)
    add_hook_to_module(module, AlignDevicesHook(execution_device=device))
    return True
