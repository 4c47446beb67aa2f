"""The broker for a configuration: Redis (kombu's transport, async) or RabbitMQ."""

from __future__ import annotations

from gateway.broker.redis_broker import Broker, RedisBroker
from shared.errors import BrokerUnavailable
from shared.settings import Settings


def make_broker(settings: Settings) -> Broker:
    url = settings.effective_broker_url
    if url is None:
        raise BrokerUnavailable("no broker configured")
    if settings.broker_is_amqp:
        from gateway.broker.amqp_broker import AmqpBroker  # type: ignore[import-not-found,unused-ignore]

        broker: Broker = AmqpBroker(url)
        return broker
    return RedisBroker(url, settings.keys.broker_prefix)
