"""Event source mapping settings that `chalice deploy` cannot set (aws/chalice#2029).

The settings come from the event-source overrides in infra/resources.yaml, the
same ones `chalice package --merge-template` merges, so both ways of deploying
configure the mappings alike.
"""

from __future__ import annotations

from typing import Any

from infra.local.template import Template

# SAM event properties that are event source mapping settings, by their Lambda API name.
_SETTINGS = (
    "FunctionResponseTypes",
    "ScalingConfig",
    "BisectBatchOnFunctionError",
    "MaximumRetryAttempts",
    "MaximumRecordAgeInSeconds",
    "ParallelizationFactor",
    "DestinationConfig",
)


def desired_settings(template: Template, function: str) -> dict[str, Any]:
    """What the mapping of one Chalice function should carry, resolved to literal values."""
    props = template.event_source_properties(function)
    wanted: dict[str, Any] = {}
    for name in _SETTINGS:
        if name not in props:
            continue
        value = template.resolve(props[name])
        if name == "DestinationConfig":
            # SAM's OnFailure has a Type; the Lambda API takes only the destination.
            value = {"OnFailure": {"Destination": value["OnFailure"]["Destination"]}}
        if name == "ScalingConfig":
            value = {k: int(v) for k, v in value.items()}
        if name in ("MaximumRetryAttempts", "MaximumRecordAgeInSeconds", "ParallelizationFactor"):
            value = int(value)
        wanted[name] = value
    return wanted


def _differs(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    changes = {}
    for name, value in wanted.items():
        have = current.get(name)
        if name == "DestinationConfig":
            have = {"OnFailure": {"Destination": ((have or {}).get("OnFailure") or {}).get("Destination")}}
        if have != value:
            changes[name] = value
    return changes


def apply_mapping_settings(lam: Any, mappings: dict[str, str], template: Template) -> dict[str, dict[str, Any]]:
    """Update each mapping (function -> mapping UUID) where it differs; returns what changed."""
    changed: dict[str, dict[str, Any]] = {}
    for function, uuid in sorted(mappings.items()):
        wanted = desired_settings(template, function)
        if not wanted:
            continue
        current = lam.get_event_source_mapping(UUID=uuid)
        changes = _differs(current, wanted)
        if changes:
            lam.update_event_source_mapping(UUID=uuid, **changes)
            changed[function] = changes
    return changed
