"""The recall API: the running proxy's memory, for ``contextwarden recall|search|memory`` and the MCP server.

Where: HTTP on 127.0.0.1 (a port the OS picks), its address in ``cw_home/recall-api.json`` (mode 0600).
Who: a caller that presents the event server's token (``cw_home/tui.json``, the same token; mode 0600,
so only this machine's user can read it) in ``X-Contextwarden-Token``. Requests with an ``Origin``
header (a browser) are refused.

Which memory (the tenant scope of a call):

- A caller that sends a credential (``X-Contextwarden-Credential``: the API key or OAuth token its
  client uses) gets that credential's tenant, hashed with the install's salt exactly as the proxy hashes
  the client's (:func:`contextwarden.util.redact.tenant_id`), plus the profile's shared workspace. Nothing
  of another tenant comes back: a recall of another tenant's id finds nothing.
- A caller that sends only the token, on a proxy whose ``memory.api_require_credential`` is false (the
  default: one user on one machine, whose files hold every tenant's memory anyway), gets every tenant
  this memory holds. A shared proxy sets ``memory.api_require_credential: true``: then a call without
  a credential is refused.
- The scope is decided before any method runs, the session commands (``POST /v1/session``) included:
  a credential lists and changes its own tenant's sessions only. ``remember`` files a note under the
  credential's tenant, or a tenant the token-only caller names (``tenant``); without either it is refused.

Every method takes and returns plain JSON; the work is done by :class:`~contextwarden.memory.service.MemoryService`
methods (``recall``, ``search_hits``, ``remember``, ``delete_session``, ``import_records``), so this
server does not care whether memory runs in the proxy's process or its own.
"""

from __future__ import annotations

import hmac
import http.client
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from ..sessionctl.commands import CommandError, run
from ..util.home import publish, unpublish
from ..util.redact import tenant_id

log = logging.getLogger(__name__)

INFO_FILE = "recall-api.json"
TOKEN_HEADER = "X-Contextwarden-Token"
CREDENTIAL_HEADER = "X-Contextwarden-Credential"
MAX_BODY = 64 * 2**20
POLL_S = 0.1  # how often the idle server checks for a shutdown (10 short wake-ups a second: nothing next to a request)


class ApiError(RuntimeError):
    """A call the API will not serve (the status says why), as the server raises it and the client gets it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def item_dict(it) -> dict[str, Any]:
    """A recalled item as plain data: the id the stub named, the text verbatim, where it came from."""
    return {"id": it.source_id or it.memory_id, "text": it.text, "session": it.session, "turn": it.turn,
            "role": it.role, "kind": it.kind, "tool": it.tool, "ts": it.ts, "tenant": it.tenant,
            "workspace": it.workspace}


class RecallApi:
    """Serves the methods for one runtime's memory service (``service()`` returns it, or None)."""

    def __init__(self, runtime, service: Callable[[], Any], token: str | None = None, host: str = "127.0.0.1") -> None:
        self.runtime = runtime
        self.service = service
        self.token = token or secrets.token_urlsafe(32)
        self.host = host
        self.port: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ---------------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return Path(self.runtime.home) / INFO_FILE

    def start(self, publish: bool = True) -> RecallApi:
        """Listen; ``publish``: write the discovery file now (the addon does once the proxy listens)."""
        api = self

        class Handler(_Handler):
            owner = api

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # stop() waits until serve_forever sees the shutdown, up to one poll interval: at the default 0.5 s
        # every runtime replaced (a new profile) or closed waited ~0.25 s for nothing
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": POLL_S},
                                        name="cw-recall-api", daemon=True)
        self._thread.start()
        if publish:
            self.publish()
        return self

    def publish(self) -> None:
        publish(self.info_path, {"host": self.host, "port": self.port, "token": self.token, "started": time.time()})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        unpublish(self.info_path, self.token)

    # --- the methods ----------------------------------------------------------------------------------
    def mine(self, credential: str | None) -> list[str] | None:
        """The tenants a caller may touch, decided before any method runs: its credential's one; the
        token alone: every tenant (None), unless ``memory.api_require_credential`` refuses it."""
        if credential:
            return [tenant_id(credential, self.runtime.salt)]
        if self.runtime.settings.memory.api_require_credential:
            raise ApiError(403, "this proxy is shared: send the credential your client uses (X-Contextwarden-Credential)")
        return None

    def call(self, method: str, args: dict[str, Any], credential: str | None) -> Any:
        mine = self.mine(credential)
        if method == "session":  # context versions, rollback, pins, compact-now (sessionctl.commands)
            try:
                return run(self.runtime, args, mine)
            except CommandError as e:
                raise ApiError(400, str(e)) from None
        svc = self.service()
        if method == "status":
            return {"pid": os.getpid(), "memory": svc is not None and svc.available}
        if svc is None:
            raise ApiError(503, "memory is off in this proxy's profile")
        tenants, ws = mine if mine is not None else svc.tenants(), self.runtime.settings.memory.shared_workspace
        if method == "recall":
            ids = args.get("ids")
            if isinstance(ids, str):
                ids = [ids]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ApiError(400, "recall: 'ids' is a list of memory ids")
            items = svc.recall(ids, tenants, ws)
            got = {it.source_id for it in items}
            return {"items": [item_dict(it) for it in items], "missing": [i for i in ids if i not in got]}
        if not svc.available:
            raise ApiError(503, f"memory is not ready: {svc.error or 'starting'}")
        if method == "search":
            q = args.get("query")
            if not isinstance(q, str) or not q.strip():
                raise ApiError(400, "search: 'query' is required")
            budget = args.get("budget_tokens")
            return svc.search_hits(q, tenants, int(args.get("k") or 10),
                                   int(budget) if budget is not None else None, ws)
        if method == "remember":
            text = args.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ApiError(400, "remember: 'text' is required")
            tenant = tenants[0] if mine is not None else args.get("tenant")
            if not isinstance(tenant, str) or not tenant:  # never "whichever tenant sent the last request"
                raise ApiError(400, "remember: send the credential your client uses (X-Contextwarden-Credential) "
                                   "or name the tenant ('tenant')")
            shared = bool(args.get("shared")) and ws
            mid = svc.remember(text, tenant, str(args.get("session") or "notes"), ws if shared else None,
                               args.get("agent"), args.get("tags"))
            return {"id": mid, "tenant": tenant, "workspace": ws if shared else None}
        if method == "delete":
            session = args.get("session")
            if not isinstance(session, str) or not session:
                raise ApiError(400, "delete: 'session' is required")
            tenant = args.get("tenant")
            if credential:
                tenant = tenants[0]  # a credential deletes its own tenant's items only
            elif tenant is not None and tenant not in tenants:
                return {"deleted": 0}
            return {"deleted": svc.delete_session(session, tenant)}
        if method == "import":
            records = args.get("records")
            if not isinstance(records, list):
                raise ApiError(400, "import: 'records' is a list of export records")
            if credential:  # a credential imports into its own tenant
                records = [{**r, "tenant": tenants[0]} for r in records if isinstance(r, dict)]
            return {"queued": svc.import_records(records)}
        raise ApiError(404, f"unknown method {method!r}")


class _Handler(BaseHTTPRequestHandler):
    owner: RecallApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # noqa: A002 - no access log (ids and queries are private)
        pass

    def _reply(self, status: int, obj: Any) -> None:
        body = orjson.dumps(obj, default=str)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(405, {"error": "POST /v1/<method> with a JSON object"})

    def do_POST(self) -> None:  # noqa: N802
        api = self.owner
        try:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if 0 < n <= MAX_BODY else b""
            if self.headers.get("Origin") is not None:
                raise ApiError(403, "browsers are not served")
            if not hmac.compare_digest(self.headers.get(TOKEN_HEADER, "").encode(), api.token.encode()):
                raise ApiError(401, "missing or wrong token (see cw_home/tui.json)")
            if not self.path.startswith("/v1/"):
                raise ApiError(404, "POST /v1/<method>")
            args = orjson.loads(raw) if raw else {}
            if not isinstance(args, dict):
                raise ApiError(400, "the body is a JSON object")
            cred = self.headers.get(CREDENTIAL_HEADER) or None
            self._reply(200, api.call(self.path[4:].strip("/"), args, cred))
        except ApiError as e:
            self._reply(e.status, {"error": str(e)})
        except orjson.JSONDecodeError:
            self._reply(400, {"error": "the body is not JSON"})
        except Exception as e:  # the API is an extra: an error is an answer, never a dead server
            log.exception("recall api")
            self._reply(500, {"error": f"{type(e).__name__}: {e}"})


# --- the client side (CLI, MCP server, bench) ------------------------------------------------------------
class RecallClient:
    """Calls a running proxy's recall API (one kept-alive connection)."""

    def __init__(self, host: str, port: int, token: str, credential: str | None = None, timeout: float = 30) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the recall API is served on loopback only")
        self.host, self.port, self.token, self.credential, self.timeout = host, int(port), token, credential, timeout
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def find(cls, home: Path | str, credential: str | None = None, timeout: float = 30) -> RecallClient | None:
        """The client of the proxy running on ``home``, or None when none is (no file, or its process is gone)."""
        try:
            info = orjson.loads((Path(home) / INFO_FILE).read_bytes())
            pid = int(info["pid"])
            os.kill(pid, 0)
            return cls(info["host"], info["port"], info["token"], credential, timeout)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def call(self, method: str, **args: Any) -> Any:
        body = orjson.dumps(args)
        headers = {"Content-Type": "application/json", TOKEN_HEADER: self.token}
        if self.credential:
            headers[CREDENTIAL_HEADER] = self.credential
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request("POST", f"/v1/{method}", body, headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        out = orjson.loads(data) if data else {}
        if resp.status != 200:
            raise ApiError(resp.status, str(out.get("error")) if isinstance(out, dict) else str(out))
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
