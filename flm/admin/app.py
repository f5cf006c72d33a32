"""The admin HTTP API: routes, auth, and the one error shape. Operations live beside it."""

from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException

from flm import keys
from flm.admin.apis import Apis
from flm.admin.dashboard import Dashboard
from flm.admin.errors import AdminError, error, json_body
from flm.admin.events import EventHub, parse_types
from flm.admin.keys import grace_of
from flm.admin.observe import PROMETHEUS_CONTENT_TYPE
from flm.admin.site import AdminKlein, Changes, loopback_peer, shield
from flm.admin.validation import no_fields, optional_json, page_limit, parse_json

log = Logger()


class AdminApp:
    app = AdminKlein()

    def __init__(self, *, token: str, apis: Apis, health: Callable[[], Awaitable[tuple[int, dict]]],
                 models: Any = None, observe: Any = None, admin_loopback: bool = True,
                 metrics_public: bool = False, events: EventHub | None = None,
                 backends: Any = None,
                 nodes: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> None:
        self._token = token.encode()
        # /metrics names every API: open only to loopback clients of a loopback admin
        # endpoint, unless the operator made it public.
        self._admin_loopback = admin_loopback
        self._metrics_public = metrics_public
        self.apis = apis
        self._health = health
        self._models = models
        self._observe = observe
        self.events = events
        self.dashboard = Dashboard()
        self.backends = backends
        self._nodes = nodes
        #: Mutations under way (the node-sync loop waits for them to end).
        self.changes = Changes()

    def _shield(self, coro: Any) -> Any:
        return shield(coro, self.changes)

    def resource(self) -> Any:
        return self.app.resource()

    # plumbing

    def check_token(self, request: Any) -> None:
        """The admin token, or ``AdminError(401)``; every non-public route runs this first."""
        token = keys.bearer_token(request.getHeader(b"authorization"))
        if token is None or not hmac.compare_digest(token, self._token):
            request.setHeader(b"www-authenticate", b"Bearer")
            raise AdminError(401, "unauthorized",
                             "Send 'Authorization: Bearer <admin token>'.")

    async def _json(self, request: Any, status: int, work: Awaitable[Any]) -> bytes:
        return json_body(request, status, await work)

    @app.handle_errors(AdminError)
    def _admin_error(self, request: Any, failure: Failure) -> bytes:
        e = failure.value
        return error(request, e.status, e.code, e.message)

    @app.handle_errors(HTTPException)
    def _http_error(self, request: Any, failure: Failure) -> bytes:
        e = failure.value
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.code, "bad_request")
        if getattr(e, "valid_methods", None):
            request.setHeader(b"allow", ", ".join(e.valid_methods).encode())
        if getattr(e, "new_url", None):  # werkzeug's redirect to the path with merged slashes
            request.setHeader(b"location", e.new_url.encode("utf-8"))
            code = "moved"
        return error(request, e.code, code, e.description or e.name)

    @app.handle_errors(Exception)
    def _crash(self, request: Any, failure: Failure) -> bytes:
        log.failure("admin request failed", failure)
        return error(request, 500, "internal_error", "Internal error; see the service log.")

    # routes

    @app.route("/health", methods=["GET", "HEAD"], public=True)
    async def health(self, request: Any) -> bytes:
        status, body = await self._health()
        return json_body(request, status, body)

    @app.route("/", methods=["GET"], public=True)  # the page signs in with the token
    @app.route("/static/<path:name>", methods=["GET"], public=True)
    def dashboard_file(self, request: Any, name: str = "") -> bytes:
        return self.dashboard.serve(request, name)

    @app.route("/api/events", methods=["GET"])
    def events_stream(self, request: Any) -> Any:
        if self.events is None:
            raise AdminError(404, "not_found", "Events are not available.")
        return self.events.stream(request, parse_types(request.args))

    @app.route("/api/nodes", methods=["GET"])
    async def list_nodes(self, request: Any) -> bytes:
        if self._nodes is None:
            raise AdminError(404, "not_found", "Nodes are not available.")
        return json_body(request, 200, await self._nodes())

    @app.route("/api/apis", methods=["POST"])
    def create_api(self, request: Any) -> Any:
        payload = parse_json(request.content.read())
        return self._shield(self._json(request, 201, self.apis.create(payload)))

    @app.route("/api/apis", methods=["GET"])
    async def list_apis(self, request: Any) -> bytes:
        cursor = request.args.get(b"cursor", [b""])[0].decode("ascii", "replace") or None
        status = request.args.get(b"status", [b""])[0].decode("ascii", "replace") or None
        return json_body(request, 200, await self.apis.list(page_limit(request.args), cursor,
                                                            status))

    @app.route("/api/apis/<ref>", methods=["GET"])
    async def show_api(self, request: Any, ref: str) -> bytes:
        return json_body(request, 200, (await self.apis.find(ref)).public())

    @app.route("/api/apis/<ref>", methods=["PATCH"])
    def update_api(self, request: Any, ref: str) -> Any:
        payload = parse_json(request.content.read())
        return self._shield(self._json(request, 200, self.apis.update(ref, payload)))

    @app.route("/api/apis/<ref>", methods=["DELETE"])
    def delete_api(self, request: Any, ref: str) -> Any:
        no_fields(optional_json(request))

        async def delete() -> bytes:
            await self.apis.delete(ref)
            request.setResponseCode(204)
            return b""
        return self._shield(delete())

    @app.route("/api/apis/<ref>/start", methods=["POST"])
    def start_api(self, request: Any, ref: str) -> Any:
        no_fields(optional_json(request))
        return self._shield(self._json(request, 200, self.apis.start(ref)))

    @app.route("/api/apis/<ref>/stop", methods=["POST"])
    def stop_api(self, request: Any, ref: str) -> Any:
        no_fields(optional_json(request))

        async def stop() -> dict[str, Any]:
            return (await self.apis.stop(ref)).public()
        return self._shield(self._json(request, 200, stop()))

    @app.route("/api/apis/<ref>/rotate-key", methods=["POST"])
    def rotate_key(self, request: Any, ref: str) -> Any:
        grace = grace_of(optional_json(request))
        return self._shield(self._json(request, 200, self.apis.rotate_key(ref, grace)))

    # /api/apis/{ref}/keys (flm.admin.keys)

    with app.subroute("/api/apis/<ref>/keys") as api_keys:
        @api_keys.route("/", methods=["GET"], strict_slashes=False)
        async def list_keys(self, request: Any, ref: str) -> bytes:
            return json_body(request, 200, await self.apis.keys.list(ref))

        @api_keys.route("/", methods=["POST"], strict_slashes=False)
        def create_key(self, request: Any, ref: str) -> Any:
            payload = parse_json(request.content.read())
            return self._shield(self._json(request, 201, self.apis.keys.create(ref, payload)))

        @api_keys.route("/<key>", methods=["GET"])
        async def show_key(self, request: Any, ref: str, key: str) -> bytes:
            return json_body(request, 200, await self.apis.keys.show(ref, key))

        @api_keys.route("/<key>", methods=["PATCH"])
        def update_key(self, request: Any, ref: str, key: str) -> Any:
            payload = parse_json(request.content.read())
            return self._shield(self._json(request, 200, self.apis.keys.update(ref, key, payload)))

        @api_keys.route("/<key>", methods=["DELETE"])
        def revoke_key(self, request: Any, ref: str, key: str) -> Any:
            return self._shield(self._json(request, 200, self.apis.keys.revoke(ref, key)))

        @api_keys.route("/<key>/rotate", methods=["POST"])
        def rotate_api_key(self, request: Any, ref: str, key: str) -> Any:
            grace = grace_of(optional_json(request))

            async def rotate() -> dict[str, Any]:
                return (await self.apis.keys.rotate(ref, key, grace))[1]
            return self._shield(self._json(request, 200, rotate()))

    # /api/models (flm.admin.models)

    def _model_ops(self) -> Any:
        if self._models is None:
            raise AdminError(404, "not_found", "Model management is not available.")
        return self._models

    with app.subroute("/api/models") as models:
        @models.route("/", methods=["GET"], strict_slashes=False)
        def list_models(self, request: Any) -> Any:
            return self._model_ops().list_models(request)

        @models.route("/refresh", methods=["POST"])
        def refresh_models(self, request: Any) -> Any:
            return self._model_ops().refresh(request)

        @models.route("/pull", methods=["POST"])
        def pull_model(self, request: Any) -> Any:
            return self._model_ops().pull(request)

        @models.route("/pulls/<job_id>", methods=["GET"])
        def pull_state(self, request: Any, job_id: str) -> Any:
            return self._model_ops().pull_state(request, job_id)

        @models.route("/pulls/<job_id>/events", methods=["GET"])
        def pull_events(self, request: Any, job_id: str) -> Any:
            return self._model_ops().pull_events(request, job_id)

        @models.route("/<path:name>", methods=["GET"])
        def show_model(self, request: Any, name: str) -> Any:
            return self._model_ops().show(request, name)

        @models.route("/<path:name>", methods=["DELETE"])
        def delete_model(self, request: Any, name: str) -> Any:
            return self._model_ops().delete(request, name)

    # /api/backends (flm.admin.backends)

    with app.subroute("/api/backends") as backends:
        @backends.route("/", methods=["GET", "POST"], strict_slashes=False)
        def backends_root(self, request: Any) -> Any:
            return self._backend_ops().route(request, None, self._shield)

        @backends.route("/<name>", methods=["GET", "PATCH", "DELETE"])
        def backend_one(self, request: Any, name: str) -> Any:
            return self._backend_ops().route(request, name, self._shield)

    def _backend_ops(self) -> Any:
        if self.backends is None:
            raise AdminError(404, "not_found", "Backends are not available.")
        return self.backends

    # logs, metrics, system (flm.admin.observe)

    def _observing(self, request: Any) -> Any:
        if self._observe is None:
            raise AdminError(404, "not_found", "Observability is not available.")
        return self._observe

    @app.route("/api/apis/<ref>/logs", methods=["GET"])
    async def api_logs(self, request: Any, ref: str) -> bytes:
        observe = self._observing(request)
        return json_body(request, 200, await observe.logs(ref, request.args))

    @app.route("/api/logs", methods=["GET"])
    async def all_logs(self, request: Any) -> bytes:
        observe = self._observing(request)
        return json_body(request, 200, await observe.logs(None, request.args))

    @app.route("/api/apis/<ref>/metrics", methods=["GET"])
    async def api_metrics(self, request: Any, ref: str) -> bytes:
        observe = self._observing(request)
        return json_body(request, 200, await observe.api_metrics(ref, request.args))

    @app.route("/api/system", methods=["GET"])
    def system(self, request: Any) -> bytes:
        return json_body(request, 200, self._observing(request).system())

    @app.route("/metrics", methods=["GET"], public=True)
    def prometheus(self, request: Any) -> bytes:
        if not (self._metrics_public or (self._admin_loopback and loopback_peer(request))):
            self.check_token(request)
        if self._observe is None:
            raise AdminError(404, "not_found", "Metrics are not available.")
        request.setHeader(b"content-type", PROMETHEUS_CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        return self._observe.prometheus()
