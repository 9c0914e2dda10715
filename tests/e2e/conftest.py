"""Start the real server (`seedance serve`) as a subprocess on a free loopback port, and stop it."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest

from seedance.bench.llava_checkpoint import build_llava
from seedance.bench.server_process import ServerProcess as RunningServer
from seedance.bench.server_process import free_port, launch
from tests.e2e.browser import launch_chromium

__all__ = ["LLAVA_MODEL", "WS_STACKS", "RunningServer", "free_port", "start_server"]

WS_STACKS = ("picows", "aiohttp")  # /v1/stream's stacks (ws_stack): the WebSocket modules run against both
_STACK_SERVERS = {"picows": "default_server", "aiohttp": "aiohttp_stack_server"}  # the default server per stack
LLAVA_MODEL = "tiny-llava"  # the served name of the tiny LLaVA checkpoint (its directory's name)


def start_server(tmp_path_factory, client_ssl: ssl.SSLContext | None = None, **env: object) -> RunningServer:
    """client_ssl: the server has tls_cert/tls_key; the readiness probe connects with this context."""
    env.setdefault("session_store", f"sqlite://{tmp_path_factory.mktemp('sessions') / 'sessions.db'}")
    # float32 unless a test asks otherwise: these tests compare greedy tokens across paths (a batch against one
    # request, a restart's re-prefill against decoding on, the process engine against the in-process one), and
    # bfloat16's rounding depends on the batch, so under `auto` on a bf16-native CPU they would compare
    # numerics, not plumbing. The CPU's own default is tested in tests/models and test_models.py.
    env.setdefault("dtype", "float32")
    return launch(env, tmp_path_factory.mktemp("server") / "server.log", client_ssl=client_ssl,
                  ready_timeout_s=90, poll_s=0.1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_stacks: the module's `server` and `server_factory` run once per "
                            "/v1/stream stack (WS_STACKS)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """In a module marked `both_stacks`, each test taking `server` or `server_factory` runs once per stack: the two
    fixtures get the stack as their (shared, module-scoped) parameter."""
    if metafunc.definition.get_closest_marker("both_stacks") is None:
        return
    names = [name for name in ("server", "server_factory") if name in metafunc.fixturenames]
    if names:
        values = [stack if len(names) == 1 else (stack,) * len(names) for stack in WS_STACKS]
        metafunc.parametrize(",".join(names), values, indirect=True, ids=WS_STACKS, scope="module")


DEFAULT_SERVER = dict(max_requests_per_connection=8, num_kv_blocks=1024)


@pytest.fixture(scope="session")
def default_server(tmp_path_factory) -> Iterator[RunningServer]:
    """The default server with the built-in model, shared by the e2e tests that need no special config."""
    srv = start_server(tmp_path_factory, **DEFAULT_SERVER)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(request) -> RunningServer:
    """The default server; in a `both_stacks` module, the default server on this run's /v1/stream stack."""
    return request.getfixturevalue(_STACK_SERVERS[getattr(request, "param", WS_STACKS[0])])


@pytest.fixture(scope="session")
def aiohttp_stack_server(tmp_path_factory) -> Iterator[RunningServer]:
    """The default server with /v1/stream on aiohttp (ws_stack, the non-default stack)."""
    srv = start_server(tmp_path_factory, ws_stack="aiohttp", **DEFAULT_SERVER)
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=WS_STACKS)
def ws_stack(request) -> str:
    """A test taking this (or `stack_server`) runs once per stack; a module whose tests all should: `both_stacks`."""
    return request.param


@pytest.fixture(scope="module")
def stack_server(request, ws_stack) -> RunningServer:
    """The default server on this module run's stack (override `server` with it in a WebSocket module)."""
    return request.getfixturevalue(_STACK_SERVERS[ws_stack])


@pytest.fixture(scope="session")
def smollm2_server(smollm2_path, tmp_path_factory) -> Iterator[RunningServer]:
    """SmolLM2 (the real chat model), shared by the modules that need it (tests/e2e/test_models.py,
    tests/e2e/test_openai_sampling.py)."""
    srv = launch({"model": "smollm2", "session_store": f"sqlite://{tmp_path_factory.mktemp('s') / 's.db'}"},
                 tmp_path_factory.mktemp("smollm2") / "server.log", ready_timeout_s=300, poll_s=0.2)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
    """A tiny random LLaVA checkpoint (seedance.bench.llava_checkpoint), built once per test session."""
    return build_llava(tmp_path_factory.mktemp("models") / LLAVA_MODEL)


def _llava(tmp_path_factory, llava_dir, engine_mode: str) -> RunningServer:
    return start_server(tmp_path_factory, model=llava_dir, dtype="float32", max_images_per_prompt=4,
                        max_message_bytes=4 << 20, engine_mode=engine_mode)


@pytest.fixture(scope="session")
def llava_thread_server(tmp_path_factory, llava_dir) -> Iterator[RunningServer]:
    srv = _llava(tmp_path_factory, llava_dir, "thread")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def llava_process_server(tmp_path_factory, llava_dir) -> Iterator[RunningServer]:
    srv = _llava(tmp_path_factory, llava_dir, "process")
    yield srv
    srv.stop()


@pytest.fixture(params=["thread", "process"])
def llava_server(request) -> RunningServer:
    """The server with the tiny LLaVA in each engine mode (the vision tower beside the engine thread, or in the
    engine process), shared by the image tests (tests/e2e/test_images.py, tests/e2e/test_realtime_images.py)."""
    return request.getfixturevalue(f"llava_{request.param}_server")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> Iterator[str]:
    """A headless Chromium per test module (tests/e2e/browser.py); yields its DevTools WebSocket URL. Modules
    using it mark themselves `requires_chromium`, so it is only reached with Chromium installed or CI set."""
    with launch_chromium(tmp_path_factory.mktemp("chromium")) as url:
        yield url


@pytest.fixture
def server_factory(request, tmp_path_factory):
    """Starts servers with the given settings, stopped after the test; in a `both_stacks` module, on this run's
    /v1/stream stack (unless the test names one)."""
    started: list[RunningServer] = []
    stack = getattr(request, "param", None)

    def make(**env: object) -> RunningServer:
        srv = start_server(tmp_path_factory, **({"ws_stack": stack} if stack else {}) | env)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
