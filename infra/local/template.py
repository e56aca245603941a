"""Reads infra/resources.yaml: the same resources the deployed stack has, for the local runtime.

Only what the file uses is resolved: ``Ref`` to parameters and to resources,
``Fn::Sub`` with ``${AWS::StackName}``/``${AWS::Region}``/``${AWS::AccountId}``,
and ``Fn::GetAtt`` of queues, tables and topics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "resources.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Also accepts the short-form tags (!Ref, !GetAtt, !Sub) should the file use them."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.SequenceNode):
        value: Any = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


@dataclass
class Template:
    """The parsed template and the values its references resolve to."""

    resources: dict[str, Any]
    parameters: dict[str, Any]
    stack_name: str
    region: str
    account_id: str
    physical: dict[str, dict[str, str]] = field(default_factory=dict)  # logical id → {"Ref": .., "Arn": ..}

    @classmethod
    def load(
        cls,
        stack_name: str,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        parameters: dict[str, Any] | None = None,
        path: Path = TEMPLATE_PATH,
    ) -> Template:
        """Parse the file and bind parameter values (defaults unless given)."""
        doc = yaml.load(path.read_text(), Loader=_CfnLoader)
        values = {name: spec.get("Default") for name, spec in (doc.get("Parameters") or {}).items()}
        values.update(parameters or {})
        return cls(doc["Resources"], values, stack_name, region, account_id)

    def of_type(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        """Logical id → properties of every resource of one type."""
        return {k: v.get("Properties", {}) for k, v in self.resources.items() if v.get("Type") == cfn_type}

    def resolve(self, value: Any) -> Any:
        """Evaluate the intrinsic functions in a value."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::GetAtt":
                logical, attribute = arg
                return self.physical[logical][attribute]
        return {k: self.resolve(v) for k, v in value.items()}

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": "aws",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self.physical[name]["Ref"]

    def _sub(self, text: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: str(self._ref(m.group(1))), text)

    def event_source_target(self, handler_name: str) -> str | None:
        """The logical id of the queue or table a Chalice handler's event source points at."""
        function_id = "".join(part[:1].upper() + part[1:] for part in handler_name.split("_"))
        events = ((self.resources.get(function_id) or {}).get("Properties") or {}).get("Events") or {}
        for spec in events.values():
            props = spec.get("Properties") or {}
            target = props.get("Queue") or props.get("Stream")
            if isinstance(target, dict) and "Fn::GetAtt" in target:
                return target["Fn::GetAtt"][0]
        return None

    def event_source_properties(self, handler_name: str) -> dict[str, Any]:
        """The override properties for a handler's event source (e.g. StartingPosition)."""
        function_id = "".join(part[:1].upper() + part[1:] for part in handler_name.split("_"))
        events = ((self.resources.get(function_id) or {}).get("Properties") or {}).get("Events") or {}
        for spec in events.values():
            return dict(spec.get("Properties") or {})
        return {}
