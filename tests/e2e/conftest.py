"""End-to-end fixtures: one stand-in upstream and a few real mitmdump processes shared by the e2e tests.

Processes start on first use and live until the last e2e test has run (a start costs 1-3 s; stopped
then, the four proxies and their memory processes do not idle beside the unit tests that follow). Tests that
share one tell their events apart with ``proxy.mark()`` and unique paths or bodies, and the
stand-in's records are cleared before every test.

Routes (how a client reaches the stand-in through a proxy):
- ``reverse``: the client's base URL is the proxy (``--mode reverse:<stand-in>``), like ANTHROPIC_BASE_URL;
- ``regular``: the client talks HTTPS to api.anthropic.com / api.openai.com through HTTPS_PROXY, trusting
  the CA this proxy generated; tests/support/redirect.py sends the intercepted requests to the stand-in.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.support import rawhttp
from tests.support.claude_code import claude_code_binary
from tests.support.proxy import ProxyProcess, start_together, stop_together
from tests.support.sdk import anthropic, openai
from tests.support.upstream import StandIn

ANTHROPIC_HOST = "https://api.anthropic.com"
OPENAI_HOST = "https://api.openai.com"
ACTIVE_PROFILE = "default"  # the profile `contextwarden run` uses: Claude Code's, with the built-in stages


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@dataclass
class Route:
    """A proxy plus how clients reach the stand-in through it."""

    proxy: ProxyProcess
    regular: bool
    label: str

    @property
    def anthropic_base(self) -> str:
        return ANTHROPIC_HOST if self.regular else self.proxy.url

    @property
    def openai_base(self) -> str:
        return (OPENAI_HOST if self.regular else self.proxy.url) + "/v1"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.proxy.ca_pem))

    def _client_kwargs(self) -> dict:
        # the SDKs use httpx2; trust_env off so a developer's own HTTPS_PROXY cannot interfere
        if self.regular:
            return {"proxy": self.proxy.url, "verify": self.ssl_context(), "trust_env": False}
        return {"trust_env": False}

    def sdk_http_client(self, **kw) -> httpx2.Client:
        return httpx2.Client(**self._client_kwargs(), timeout=30, **kw)

    # Each client gets a key of its own by default: a new tenant, so the active profile's memory (which is
    # per tenant) has nothing from other tests to inject.
    def anthropic(self, api_key: str | None = None, **kw) -> anthropic.Anthropic:
        api_key = api_key or f"sk-ant-e2e-{uuid.uuid4().hex}"
        return anthropic.Anthropic(api_key=api_key, base_url=self.anthropic_base, max_retries=0,
                                   http_client=self.sdk_http_client(event_hooks=kw.pop("event_hooks", None)), **kw)

    def openai(self, api_key: str | None = None, **kw) -> openai.OpenAI:
        api_key = api_key or f"sk-proj-e2e-{uuid.uuid4().hex}"
        return openai.OpenAI(api_key=api_key, base_url=self.openai_base, max_retries=0,
                             http_client=self.sdk_http_client(event_hooks=kw.pop("event_hooks", None)), **kw)

    def host_header(self, openai_host: bool = False) -> str:
        """The Host header a client of this route sends."""
        if self.regular:
            return "api.openai.com" if openai_host else "api.anthropic.com"
        return f"127.0.0.1:{self.proxy.port}"

    def socket(self, openai_host: bool = False):
        """A raw connection for byte-exact requests (TLS through the CONNECT tunnel in regular mode)."""
        if self.regular:
            return rawhttp.connect(self.proxy.port, ("api.openai.com" if openai_host else "api.anthropic.com") + ":443",
                                   str(self.proxy.ca_pem))
        return rawhttp.connect(self.proxy.port)

    def claude_env(self) -> dict[str, str]:
        """How Claude Code is pointed at this route: HTTPS_PROXY + the proxy's CA, or ANTHROPIC_BASE_URL."""
        if self.regular:
            return {"HTTPS_PROXY": self.proxy.url, "NODE_EXTRA_CA_CERTS": str(self.proxy.ca_pem)}
        return {"ANTHROPIC_BASE_URL": self.proxy.url}


@pytest.fixture(scope="package")
def standin():
    with StandIn() as si:
        yield si


@pytest.fixture(autouse=True)
def _fresh_standin(standin):
    standin.reset()
    yield


class ProxyFarm:
    """The session's four proxies (observe-only / active profile x reverse / regular mode).

    The first test that needs one starts all four at once: their 4-8 s warm-ups (imports, tokenizers,
    the memory service's Chroma and ONNX model) overlap instead of adding up.
    """

    def __init__(self, tmp_path_factory, standin: StandIn) -> None:
        # Ready means warmed up: until the memory service has loaded (Chroma, the ONNX model) its thread
        # competes with the event loop for the GIL and delays streamed chunks by up to ~0.5 s.
        ready = ("startup", "memory_status")
        self.procs = {
            name: ProxyProcess(tmp_path_factory.mktemp(name), name=name, ready_events=ready, profile=profile,
                               **({"reverse": standin.url} if reverse else {"redirect": standin.url}))
            for name, profile, reverse in (("observe-reverse", "observe-only", True),
                                           ("observe-regular", "observe-only", False),
                                           ("active-reverse", ACTIVE_PROFILE, True),
                                           ("active-regular", ACTIVE_PROFILE, False))
        }
        self.started = False

    def get(self, name: str) -> ProxyProcess:
        if not self.started:
            self.started = True
            start_together(self.procs.values())
        return self.procs[name]

    def stop(self) -> None:
        stop_together(self.procs.values())


@pytest.fixture(scope="package")
def proxy_farm(tmp_path_factory, standin):
    farm = ProxyFarm(tmp_path_factory, standin)
    yield farm
    farm.stop()


@pytest.fixture(scope="package")
def observe_reverse(proxy_farm):
    return proxy_farm.get("observe-reverse")


@pytest.fixture(scope="package")
def observe_regular(proxy_farm):
    return proxy_farm.get("observe-regular")


@pytest.fixture(scope="package")
def active_reverse(proxy_farm):
    return proxy_farm.get("active-reverse")


@pytest.fixture(scope="package")
def active_regular(proxy_farm):
    return proxy_farm.get("active-regular")


ROUTES = {
    "observe-reverse": ("observe_reverse", False),
    "observe-regular": ("observe_regular", True),
    "active-reverse": ("active_reverse", False),
    "active-regular": ("active_regular", True),
}


def route_for(request, label: str) -> Route:
    fixture, regular = ROUTES[label]
    return Route(request.getfixturevalue(fixture), regular, label)


@pytest.fixture(params=list(ROUTES))
def route(request) -> Route:
    """Every proxy x mode combination."""
    return route_for(request, request.param)


@pytest.fixture(params=["observe-reverse", "observe-regular"])
def observe_route(request) -> Route:
    return route_for(request, request.param)


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """The real Claude Code CLI (installed with npm under .cache/ on first use)."""
    return claude_code_binary()


def expected_upstream_headers(route: Route, sent: list[tuple[str, str]], standin) -> list[tuple[str, str]]:
    """What the upstream must receive for ``sent``: the same list, except that in reverse mode mitmproxy
    points Host at the upstream (its ``keep_host_header`` option is off by default, as it must be for a
    real provider). mitmproxy changes nothing else, not even hop-by-hop headers (measured)."""
    if route.regular:
        return list(sent)
    return [(k, f"127.0.0.1:{standin.port}" if k.lower() == "host" else v) for k, v in sent]
