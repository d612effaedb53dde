"""A model serves the endpoints of its kind only: a request to another is refused, not forwarded.

The kind comes from the catalog entry of a public name, else from the registry rows of a
registered name; the rule (kind -> endpoints) is the engines table's KIND_ENDPOINTS. A catalog
entry's capabilities that name a kind add that kind's endpoints (an embeddings model that vLLM
also serves for rerank and score has capabilities ["embeddings", "rerank"]).
"""

from __future__ import annotations

from launcher.engines.table import KIND_ENDPOINTS
from router.api.paths import AUDIO_ENDPOINTS, JSON_ENDPOINTS
from router.errors import RouterError
from router.state import RouterState

# Endpoint name -> its first path, for messages that say where to send the request instead.
_PATHS = {endpoint: path for path, endpoint in reversed({**JSON_ENDPOINTS, **AUDIO_ENDPOINTS}.items())}


def model_kinds(state: RouterState, model: str) -> tuple[str, ...]:
    """The kinds of the servers behind public name MODEL; () when the router knows none."""
    names = state.names
    route = names.routes.get(model)
    if route is not None:
        entry = route.entry
        return tuple(dict.fromkeys((entry.kind, *(c for c in entry.capabilities if c in KIND_ENDPOINTS))))
    if names.hidden(model):  # an entry name: ready_pool answers 404 without telling more
        return ()
    pool = state.view.snapshot.pools.get(model)
    return tuple(dict.fromkeys(b.record.kind for b in pool.backends)) if pool is not None else ()


def check_kind(state: RouterState, model: str, endpoint: str) -> None:
    """A 400 naming the model's kind and its endpoints when it does not serve ENDPOINT."""
    kinds = model_kinds(state, model)
    if not kinds or any(endpoint in KIND_ENDPOINTS.get(kind, ()) for kind in kinds):
        return
    paths = dict.fromkeys(_PATHS[e] for kind in kinds for e in KIND_ENDPOINTS.get(kind, ()) if e in _PATHS)
    raise RouterError(400, f"model {model!r} is a {' and '.join(kinds)} model; it serves {', '.join(paths)}",
                      param="model", code="wrong_endpoint_for_model")
