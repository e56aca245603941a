"""The deployable template: Chalice's package merged with infra/resources.yaml, checked by cfn-lint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.local.template import _CfnLoader

pytestmark = pytest.mark.integration


def test_cfn_lint_accepts_the_packaged_template(packaged: Path) -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), str(packaged)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sqs_event_sources_report_partial_batch_failures_and_point_at_real_queues(packaged: Path) -> None:
    template = yaml.load(packaged.read_text(), Loader=_CfnLoader)
    resources = template["Resources"]
    sqs_sources = {
        f"{function}.{name}": spec["Properties"]
        for function, resource in resources.items()
        if resource.get("Type") == "AWS::Serverless::Function"
        for name, spec in (resource["Properties"].get("Events") or {}).items()
        if spec["Type"] == "SQS"
    }
    assert "SendMail.SendMailSqsEventSource" in sqs_sources
    for name, props in sqs_sources.items():
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
        assert set(props["Queue"]) == {"Fn::GetAtt"}, name  # the real queue, not Chalice's placeholder
    assert sqs_sources["SendMail.SendMailSqsEventSource"]["Queue"] == {"Fn::GetAtt": ["SendQueue", "Arn"]}
    send_queue = resources["SendQueue"]["Properties"]
    assert send_queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["SendDeadLetterQueue", "Arn"]}
    stream = resources["AggregateRecipients"]["Properties"]["Events"]["AggregateRecipientsDynamodbEventSource"]
    assert stream["Properties"]["Stream"] == {"Fn::GetAtt": ["RecipientsTable", "StreamArn"]}
    assert resources["RecipientsTable"]["Properties"]["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
