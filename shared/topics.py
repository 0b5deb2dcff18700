"""Topic names, partition counts and message keys: the one place that names them.

Commands and events are keyed by aggregate id (a flow-run id, or ``REGISTRY_AGGREGATE``).
The writer puts each event on the *same partition number* as the command that caused it,
so a flow run's commands and events always meet in one writer partition.
"""

from __future__ import annotations

from dataclasses import dataclass

from runledger.settings import Settings

REGISTRY_AGGREGATE = "registry"


@dataclass(frozen=True)
class Topics:
    commands: str
    events: str
    replies: str
    partitions: int
    reply_partitions: int

    def all(self) -> list[tuple[str, int]]:
        return [
            (self.commands, self.partitions),
            (self.events, self.partitions),
            (self.replies, self.reply_partitions),
        ]


def topics_for(settings: Settings) -> Topics:
    p = settings.topic_prefix
    return Topics(
        commands=f"{p}.commands",
        events=f"{p}.events",
        replies=f"{p}.replies",
        partitions=settings.partitions,
        reply_partitions=settings.reply_partitions,
    )
