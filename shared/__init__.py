"""What the gateway and the workers both speak: schema, statuses, keys, settings, errors."""

from shared.errors import (
    AuthError,
    BadRequest,
    BrokerUnavailable,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TaskCancelled,
    TaskgateError,
    UnknownTask,
)
from shared.keys import Keys
from shared.registry import TaskContext, TaskSpec, get_task, task
from shared.schema import SCHEMA_VERSION, Snapshot, Update
from shared.settings import Settings
from shared.status import TERMINAL, TaskStatus
from shared.task_input import TaskInput

__all__ = [
    "SCHEMA_VERSION",
    "TERMINAL",
    "AuthError",
    "BadRequest",
    "BrokerUnavailable",
    "ConfigError",
    "Conflict",
    "InvalidInput",
    "Keys",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Settings",
    "Snapshot",
    "TaskCancelled",
    "TaskContext",
    "TaskInput",
    "TaskSpec",
    "TaskStatus",
    "TaskgateError",
    "UnknownTask",
    "Update",
    "get_task",
    "task",
]
