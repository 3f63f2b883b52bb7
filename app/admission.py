"""Load shedding's state in one worker: the POST requests in progress and how many it admits.

Read by the HTTP protocol (``app.http_guard``), which refuses a request over the limit as soon as its
headers are in, before any application code runs, and by the admission middleware
(``app.middleware.AdmissionMiddleware``), which counts the admitted ones and refuses where no guarded
protocol runs (the test client). One object per worker, created in the lifespan handler.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.error_codes import OVERLOADED

SHED_STATUS = OVERLOADED.status
SHED_CODE = OVERLOADED.code


@dataclass
class Admission:
    max_pending: int
    retry_after_s: int = 1
    pending: int = 0
    # Set by the guarded HTTP protocol, which then counts and refuses itself (app.http_guard).
    guarded: bool = False

    def full(self) -> bool:
        return self.pending >= self.max_pending

    @property
    def message(self) -> str:
        return (f"the server is busy ({self.max_pending} requests in progress in this worker); retry after the "
                "Retry-After delay")

    @property
    def headers(self) -> dict[str, str]:
        # Closed: a client that retries at once must reconnect, which keeps refusals from taking the
        # event loop. Measured with benchmarks.overload's wrk load (512 clients) while this was developed:
        # 13,000 refusals/s and 95 classifications/s with the connection kept, ~1,000 classifications/s
        # with it closed (a comparison against code no longer in the tree; the current figures are
        # benchmarks/results/overload.json).
        return {"Retry-After": str(self.retry_after_s), "Connection": "close"}
