"""Domain and request errors as GraphQL errors (``extensions.code``); see ``ingress/errors.py``
for the rejection table shared with REST."""

from __future__ import annotations

import functools
from typing import Any

from graphql import GraphQLError
from pydantic import ValidationError

from runledger.domain.run_requests import RequestError
from runledger.services.ingress.application import CommandRejected
from runledger.services.ingress.errors import OUTAGE_GRAPHQL_CODE, OUTAGES, graphql_code
from runledger.services.runtime.bus import CommandTimeout


def error(message: str, code: str, **extensions: Any) -> GraphQLError:
    return GraphQLError(message, extensions={**extensions, "code": code})


def translate_errors(resolver):
    @functools.wraps(resolver)
    async def wrapper(*args, **kwargs):
        try:
            return await resolver(*args, **kwargs)
        except CommandRejected as rejected:
            r = rejected.rejection
            raise error(r.message, graphql_code(r.code), **{**r.details, "rule": r.rule, "field": r.field}) from None
        except RequestError as exc:
            raise error(str(exc), "BAD_USER_INPUT", status=exc.status, errors=[e.as_dict() for e in exc.errors]) from None
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
            raise error(message, "BAD_USER_INPUT", errors=errors) from None
        except CommandTimeout as exc:
            raise error(str(exc), OUTAGE_GRAPHQL_CODE) from None
        except OUTAGES as exc:
            raise error(f"a dependency is unavailable ({type(exc).__name__}); retry shortly", OUTAGE_GRAPHQL_CODE) from None

    return wrapper
