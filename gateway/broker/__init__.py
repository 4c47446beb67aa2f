"""Brokers: publishing Celery messages to Redis (kombu's transport) or RabbitMQ, the message
itself, and the outbox that brings back messages lost in flight."""
