"""What the two adapters built on Lightning's ``Trainer`` share.

``lightning`` drives Lightning 2.x; ``flash`` drives Flash's ``flash.Trainer``, which is Lightning
1.9's (``pytorch_lightning``). Both hand the Trainer the same device, precision and step budget and,
in ``aligned``, switch off the same extras; both describe the precision plugin the Trainer picked.
This module imports neither library (each adapter imports its own), so it works beside either.
"""

from __future__ import annotations

from typing import Any

from adapters.base import Job

ALIGNED_SWITCHES = {
    "max_epochs": -1,  # the step budget alone ends training, as in the native loop
    "num_sanity_val_steps": 0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "logger": False,
}
"""Everything the native loop does not do, off (the sampler switch is named differently per version)."""


def trainer_options(job: Job, precision: Any) -> dict[str, Any]:
    """The Trainer arguments both modes share: device, processes, precision, step budget, folder."""
    options: dict[str, Any] = {
        "accelerator": job.device.type,
        "devices": [job.device.index or 0] if job.device.type == "cuda" else 1,
        "precision": precision,
        "max_steps": job.steps,
        "accumulate_grad_batches": job.grad_accum,
        "default_root_dir": job.workdir,
    }
    if job.dist.enabled:
        options.update(
            devices=job.dist.local_world_size,
            num_nodes=job.dist.world_size // job.dist.local_world_size,
            strategy="ddp",
        )
    return options


def step_autocast(plugin) -> dict[str, Any]:
    """The autocast state inside the plugin's ``forward_context`` (what wraps ``training_step``)."""
    import torch

    device = getattr(plugin, "device", "cpu")
    with plugin.forward_context():
        enabled = torch.is_autocast_enabled(device)
        return {
            "enabled": enabled,
            "dtype": str(torch.get_autocast_dtype(device)).removeprefix("torch.") if enabled else None,
            "cache_enabled": torch.is_autocast_cache_enabled() if enabled else None,
        }


def describe_precision(trainer, library: str) -> str:
    """What the Trainer's precision plugin does, read off the plugin itself (not off the option asked for).

    The autocast dtype and ``cache_enabled`` are read inside the plugin's ``forward_context``: Lightning
    2.6 turns the weight cache off there (a reused weight is cast at every use), 2.1 and 1.9 do not.
    """
    plugin = trainer.precision_plugin
    name = type(plugin).__name__
    precision = getattr(plugin, "precision", "?")
    # Lightning 2.x / 1.9 names of the autocast plugin, and the lightning adapter's aligned-mode subclass
    if name in ("MixedPrecision", "MixedPrecisionPlugin", "CachedAutocast"):
        autocast = step_autocast(plugin)
        scaler = "GradScaler" if getattr(plugin, "scaler", None) is not None else "no GradScaler"
        return (
            f"{library} {name}({precision!r}): training_step under torch.autocast({getattr(plugin, 'device', '?')}, "
            f"{autocast['dtype']}, cache_enabled={autocast['cache_enabled']}), {scaler}"
        )
    return f"{library} {name}({precision!r})"


def defaults_notes(trainer) -> dict[str, Any]:
    """What a Trainer left at its defaults turned on: logger, callbacks, logging interval."""
    return {
        "logger": type(trainer.logger).__name__ if trainer.logger else None,
        "callbacks": sorted(type(callback).__name__ for callback in trainer.callbacks),
        "log_every_n_steps": trainer.log_every_n_steps,
    }
