"""``clusterbus demo --amqp-url``: three node processes on the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_demo import check_demo, run_demo

pytestmark = pytest.mark.amqp


def test_demo_on_rabbitmq_behaves(amqp_url: str, tmp_path: Path) -> None:
    check_demo(*run_demo(tmp_path, "--amqp-url", amqp_url))
