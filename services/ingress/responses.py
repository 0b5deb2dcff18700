"""The ingress's JSON response: orjson rendering on Starlette's JSONResponse (FastAPI deprecated
its own ORJSONResponse, which now warns on every request)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
