"""Tests against a local multi-node RabbitMQ cluster (see ``tests.cluster.harness``)."""
