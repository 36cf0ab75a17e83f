"""The RabbitMQ backend (aio-pika): one robust connection per instance and what rides on it."""

# First: installs the tolerant decoding of message properties before any connection exists.
from bus.amqp import tolerant_decoding
from bus.amqp.broadcast import AmqpBroadcast
from bus.amqp.locks import AmqpLocks
from bus.amqp.queues import AmqpQueues
from bus.amqp.transport import AmqpTransport

__all__ = ["AmqpBroadcast", "AmqpLocks", "AmqpQueues", "AmqpTransport", "tolerant_decoding"]
