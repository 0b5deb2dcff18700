"""Flow schedules: ``set_schedule_active`` / ``set_schedule_inactive``.

Both flip the flow group's schedule switch (an ``UpdateFlowGroup`` to the registry's writer), the
same switch a registration sets from its ``set_schedule_active`` input (``registration.py``;
``Client.register()`` registers with false and calls ``set_schedule_active`` once the tasks are
in). The scheduling service (``services/scheduling/schedules.py``) creates the runs of an active
schedule ahead of time and cancels the future auto-scheduled runs of one switched off."""

from __future__ import annotations

from ariadne import MutationType

from runledger.services.ingress.graphql.errors import translate_errors

mutation = MutationType()


def scheduling_of(info):
    return info.context["request"].app.state.scheduling


@mutation.field("set_schedule_active")
@translate_errors
async def resolve_set_schedule_active(_, info, input):
    return {"success": await scheduling_of(info).set_schedule_active(input["flow_id"], True)}


@mutation.field("set_schedule_inactive")
@translate_errors
async def resolve_set_schedule_inactive(_, info, input):
    return {"success": await scheduling_of(info).set_schedule_active(input["flow_id"], False)}


bindables = [mutation]
