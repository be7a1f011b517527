"""Energy and CO2 of a piece of work through codecarbon's offline tracker (measured or estimated, and
which: the result says where each power figure came from)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

_CPU_SENSORS = {
    "intel_rapl": "RAPL energy counters",
    "windows_emi": "Windows Energy Meter Interface (RAPL)",
    "intel_power_gadget": "Intel Power Gadget",
}
_OTHER_SENSORS = {
    "GPU": "power readings of the GPU driver (NVML / AMD SMI)",
    "AppleSiliconChip": "Apple powermetrics",
    "Raspberry": "the Raspberry Pi power monitor",
}
INSTALL_HINT = "pip install 'lmdistill[report]'"


@contextlib.contextmanager
def _quiet_codecarbon() -> Iterator[None]:
    """codecarbon logs every measurement at INFO: keep only its errors while we track. Importing it
    sets its log level, so it is imported first."""
    with contextlib.suppress(ImportError):
        import codecarbon  # noqa: F401
    codecarbon_logger = logging.getLogger("codecarbon")
    level = codecarbon_logger.level
    codecarbon_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        codecarbon_logger.setLevel(level)


def _cpu_source(hardware: Any) -> tuple[str, bool]:
    mode = getattr(hardware, "_mode", "unknown")
    if mode in _CPU_SENSORS:
        return f"CPU measured by {_CPU_SENSORS[mode]}", True
    tdp = f"{getattr(hardware, '_tdp', '?')} W{' generic' if getattr(hardware, '_is_generic_tdp', False) else ''}"
    if mode == "cpu_load":
        return f"CPU estimated from CPU load x TDP ({tdp}) by codecarbon's model, no power sensor", False
    return f"CPU estimated as a constant share of the TDP ({tdp}) by codecarbon, no power sensor", False


def _power_sources(tracker: Any) -> dict[str, Any]:
    """How codecarbon got each power figure: a hardware sensor, or one of its estimation models."""
    sources, measured = [], []
    for hardware in getattr(tracker, "_hardware", []):
        kind = type(hardware).__name__
        if kind == "CPU":
            text, sensor = _cpu_source(hardware)
        elif kind in _OTHER_SENSORS:
            text, sensor = f"{kind} measured by {_OTHER_SENSORS[kind]}", True
        elif kind == "RAM":
            sources.append("RAM estimated by codecarbon's RAM power model (always an estimate)")
            continue
        else:
            text, sensor = f"{kind}: unknown source", False
        sources.append(text)
        measured.append(sensor)
    return {"estimated": not (measured and all(measured)), "method": "; ".join(sources) or "unknown"}


def _start_tracker(label: str, country: str, measure_power_secs: float, tracking_mode: str) -> tuple:
    """(tracker, "") or (None, why not). Offline: no network, no geo lookup; nothing written to disk."""
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError:
        return None, f"codecarbon is not installed ({INSTALL_HINT})"
    try:
        tracker = OfflineEmissionsTracker(
            project_name=label,
            country_iso_code=country,
            output_methods=[],
            log_level="error",
            measure_power_secs=measure_power_secs,
            tracking_mode=tracking_mode,
            allow_multiple_runs=True,
        )
        tracker.start()
    except Exception as exc:  # codecarbon probes hardware; any failure means "not measured"
        return None, f"codecarbon failed to start: {exc}"
    return tracker, ""


def _stop_tracker(tracker: Any, country: str) -> dict[str, Any]:
    try:
        tracker.stop()
        data = tracker.final_emissions_data
        energy = {
            "energy_kwh": data.energy_consumed,
            "cpu_energy_kwh": data.cpu_energy,
            "gpu_energy_kwh": data.gpu_energy,
            "ram_energy_kwh": data.ram_energy,
        }
        emissions, duration, country_name = data.emissions, data.duration, data.country_name
    except Exception as exc:
        return {"measured": False, "reason": f"codecarbon failed to stop: {exc}"}
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in energy.values()):
        return {"measured": False, "reason": f"codecarbon returned unusable energy figures {energy}"}
    result = {"measured": True, **energy, "emissions_kg_co2": float(emissions), "duration_s": float(duration)}
    if country_name is None:  # codecarbon falls back silently on an unknown country
        result.update(emissions_kg_co2=None, emissions_reason=f"unknown country ISO code {country!r}")
    return {**result, **_power_sources(tracker)}


def _per_thousand(result: dict[str, Any], predictions: int) -> dict[str, Any]:
    per = {"predictions": predictions}
    for key in ("energy_kwh", "emissions_kg_co2"):
        value = result.get(key)
        per[f"{key}_per_1000"] = value * 1000 / predictions if value is not None and predictions > 0 else None
    return per


@contextlib.contextmanager
def track_energy(
    label: str,
    *,
    country_iso_code: str = "USA",
    predictions: int | None = None,
    measure_power_secs: float = 0.5,
    tracking_mode: str = "process",
) -> Iterator[dict[str, Any]]:
    """Energy and CO2 of the ``with`` body; the yielded dict is filled when the body ends (even on error).

    codecarbon's ``OfflineEmissionsTracker``: the carbon intensity is the ``country_iso_code`` grid
    average from its bundled data (no network), nothing is written to disk, its logging is kept to
    errors. ``tracking_mode="process"`` attributes CPU load to this process (and children) only.
    Keys: ``measured``, ``energy_kwh`` (with ``cpu_/gpu_/ram_energy_kwh``), ``emissions_kg_co2``,
    ``duration_s``, ``estimated`` (False only when CPU and any GPU power came from a hardware sensor:
    RAPL, NVML, ...), ``method`` (where each power figure came from), and with ``predictions`` the
    ``energy_kwh_per_1000`` and ``emissions_kg_co2_per_1000`` predictions. When codecarbon is missing
    or fails: ``measured: False`` and the ``reason``; ``wall_time_s`` is always our own clock.
    """
    result: dict[str, Any] = {
        "label": label,
        "country_iso_code": country_iso_code,
        "tracking_mode": tracking_mode,
    }
    with _quiet_codecarbon():
        tracker, reason = _start_tracker(label, country_iso_code, measure_power_secs, tracking_mode)
        start = time.perf_counter()
        try:
            yield result
        finally:
            result["wall_time_s"] = time.perf_counter() - start
            stopped = (
                _stop_tracker(tracker, country_iso_code) if tracker else {"measured": False, "reason": reason}
            )
            result.update(stopped)
            if predictions is not None:
                result.update(_per_thousand(result, predictions))


def measure_energy(
    fn: Callable[[], Any],
    *,
    label: str,
    country_iso_code: str = "USA",
    predictions: int | None = None,
    measure_power_secs: float = 0.5,
) -> dict[str, Any]:
    """:func:`track_energy` around ``fn()``. Pass ``predictions`` (examples ``fn`` predicts) to get the
    energy and CO2 per 1,000 predictions; run ``fn`` long enough (seconds) for a meaningful figure."""
    with track_energy(
        label,
        country_iso_code=country_iso_code,
        predictions=predictions,
        measure_power_secs=measure_power_secs,
    ) as result:
        fn()
    return result
