"""The Mattermost client against the simulator: listings, users, files, errors and faults."""

from __future__ import annotations

import io
import time

import pytest

from mattermost_connector.config import MattermostSettings
from mattermost_connector.errors import AuthenticationError, MattermostError
from mattermost_connector.mattermost.client import MattermostClient, RetryPolicy
from tests.mattermost_sim import Demo, MattermostSimulator
from tests.support import make_client


def test_listing_returns_order_only_not_context_posts(demo: Demo):
    client = make_client(demo.sim, demo.token)
    channel = demo.channels[0]
    page = client.posts(channel["id"], page=0, per_page=200)
    assert len(page) == 200
    assert [p["create_at"] for p in page] == sorted((p["create_at"] for p in page), reverse=True)
    raw = demo.sim.requests[-1]
    assert raw.query["per_page"] == ["200"]
    # the server sent context posts too; they must not leak into the page
    body = client._http.get(f"/channels/{channel['id']}/posts", params={"per_page": 200}).json()
    assert set(body["posts"]) - set(body["order"]), "simulator should send context posts"


def test_users_are_fetched_in_batches(demo: Demo):
    client = make_client(demo.sim, demo.token)
    ids = [u["id"] for u in demo.users] + ["z" * 26]
    found = client.users(ids)
    assert {u["username"] for u in found} == {"octi-reader", "alice", "bob", "feedbot"}
    assert [r.method for r in demo.sim.requests].count("POST") == 1


def test_file_download_is_byte_exact_with_sha256(demo: Demo):
    client = make_client(demo.sim, demo.token)
    stored = next(iter(demo.sim.state.files.values()))
    sink = io.BytesIO()
    result = client.download(stored.info["id"], sink)
    assert sink.getvalue() == stored.data
    assert result.size == len(stored.data)
    import hashlib

    assert result.sha256 == hashlib.sha256(stored.data).hexdigest()


def test_bad_token_fails_at_once_without_retrying(demo: Demo):
    client = make_client(demo.sim, "wrong-token-xyz")
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="check MATTERMOST_TOKEN") as caught:
        client.channel(demo.channels[0]["id"])
    assert time.monotonic() - started < 2
    assert caught.value.error_id == "api.context.session_expired.app_error"
    assert len(demo.sim.requests) == 1
    assert "wrong-token-xyz" not in str(caught.value)


def test_token_travels_in_the_header_only(demo: Demo):
    client = make_client(demo.sim, demo.token)
    client.me()
    assert all("access_token" not in r.query for r in demo.sim.requests)


@pytest.mark.parametrize(
    ("status", "error_id"),
    [
        (404, "app.channel.get.existing.app_error"),
        (400, "api.context.invalid_url_param.app_error"),
        (403, "api.context.permissions.app_error"),
    ],
)
def test_app_errors_carry_status_and_id_and_are_never_asked_again(
    demo: Demo, status: int, error_id: str
):
    """A 400, 403 or 404 would answer the same again: one request, no retry, no wait."""
    sim = demo.sim
    outsider = sim.add_user("outsider")
    secret = sim.add_channel(sim.add_team("elsewhere"), "secret", type="P", members=[outsider])
    client = make_client(sim, demo.token)
    channel_id = {404: "q" * 26, 400: "Q" * 26, 403: secret["id"]}[status]
    mark = len(sim.requests)
    started = time.monotonic()
    with pytest.raises(MattermostError) as caught:
        client.channel(channel_id)
    assert (caught.value.status, caught.value.error_id) == (status, error_id)
    assert [r.status for r in sim.requests[mark:]] == [status]
    assert time.monotonic() - started < 1  # the retry policy's first wait is 0.01 s here


@pytest.mark.parametrize("share", [1.0, 0.0], ids=["retry-after", "x-ratelimit-reset-only"])
def test_429_waits_for_retry_after_or_else_x_ratelimit_reset(demo: Demo, share: float):
    """429s from a budget shared with other clients: each is retried only once its wait is
    over, read from Retry-After or, when a 429 lacks it, from X-RateLimit-Reset (the
    simulator refuses any earlier retry again)."""
    faults = demo.sim.faults
    faults.retry_after, faults.retry_after_share = 2, share
    calls: list[str] = []

    def throttle_the_first_and_fourth(path: str, query: dict) -> None:
        calls.append(path)
        faults.throttle_rate = 1.0 if len(calls) in (1, 4) else 0.0

    demo.sim.on_request = throttle_the_first_and_fourth
    client = make_client(demo.sim, demo.token)
    channel_id = demo.channels[0]["id"]
    for _ in range(4):
        client.posts(channel_id, per_page=10)
    requests = demo.sim.requests
    assert [r.status for r in requests] == [429, 200, 200, 429, 200, 200]
    for index, request in enumerate(requests[:-1]):
        if request.status == 429:  # 2 s to wait: the 1 s default would come too soon
            assert requests[index + 1].at - request.at >= 1.95


def test_pacing_on_x_ratelimit_remaining_avoids_every_429(demo: Demo):
    """With the server's limiter on, the client spends the budget, then waits X-RateLimit-Reset
    (until the bucket is full again) before the server has to refuse anything."""
    demo.sim.faults.rate_limit_per_sec, demo.sim.faults.rate_limit_burst = 4, 3
    client = make_client(demo.sim, demo.token)
    channel_id = demo.channels[0]["id"]
    started = time.monotonic()
    for _ in range(10):
        client.posts(channel_id, per_page=10)
    elapsed = time.monotonic() - started
    assert [r.status for r in demo.sim.requests] == [200] * 10
    # what the server's budget costs (10 requests, 4 at once, 4 a second), and not much more
    assert 1.5 <= elapsed < 5


def test_5xx_and_dropped_connections_are_retried(demo: Demo):
    demo.sim.faults.error_rate = 0.2
    demo.sim.faults.drop_rate = 0.1
    client = make_client(demo.sim, demo.token, attempts=8)
    channel_id = demo.channels[0]["id"]
    for page in range(8):
        assert len(client.posts(channel_id, page=page, per_page=100)) == 100
    statuses = {r.status for r in demo.sim.requests}
    assert {0, 200} <= statuses and statuses & {500, 502, 503}


def test_a_server_that_keeps_failing_gives_up_with_a_clear_error(demo: Demo):
    demo.sim.faults.error_rate = 1.0
    client = make_client(demo.sim, demo.token, attempts=3)
    with pytest.raises(MattermostError, match=r"gave up after 3 attempts \(status 5\d\d\)"):
        client.channel(demo.channels[0]["id"])


def settings_for(sim: MattermostSimulator, token: str, **values) -> MattermostSettings:
    base = {
        "domain": "127.0.0.1",
        "port": sim.port,
        "protocol": "http",
        "token": token,
        "channel_ids": ["a" * 26],
    }
    return MattermostSettings(**{**base, **values})


@pytest.mark.parametrize("values", [{"timeout": 0.3}, {"timeout": 30, "request_timeout": 0.3}])
def test_timeouts_apply_to_every_request(demo: Demo, values: dict):
    demo.sim.faults.latency = 1.0
    client = MattermostClient(
        settings_for(demo.sim, demo.token, **values), retry=RetryPolicy(attempts=2, base_delay=0.01)
    )
    started = time.monotonic()
    with pytest.raises(MattermostError, match=r"gave up after 2 attempts \(ReadTimeout"):
        client.channel(demo.channels[0]["id"])
    assert time.monotonic() - started < 2.5
    with pytest.raises(MattermostError, match="ReadTimeout"):
        client.download(next(iter(demo.sim.state.files)), io.BytesIO())


def test_a_slow_server_within_the_request_timeout_is_fine(demo: Demo):
    demo.sim.faults.latency = 0.4
    client = MattermostClient(settings_for(demo.sim, demo.token, timeout=0.2, request_timeout=2))
    assert client.channel(demo.channels[0]["id"])["name"] == "ioc-sharing"


@pytest.mark.parametrize("verify", [True, False])
def test_certificate_verification_follows_the_setting(demo: Demo, verify: bool):
    import ssl

    settings = settings_for(demo.sim, demo.token, protocol="https", verify=verify)
    client = MattermostClient(settings)
    context = client._http._transport._pool._ssl_context
    assert (context.verify_mode == ssl.CERT_REQUIRED) is verify
    assert context.check_hostname is verify


def test_an_answer_that_is_not_json_is_a_clear_error():
    import httpx

    def proxy_page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>login</html>", headers={"Content-Type": "text/html"})

    settings = MattermostSettings(domain="chat.example.org", token="t", channel_ids=["a" * 26])
    client = MattermostClient(settings, transport=httpx.MockTransport(proxy_page))
    with pytest.raises(
        MattermostError, match=r"^GET /channels/a{26}: answer is not JSON \(status 200\)$"
    ):
        client.channel("a" * 26)


def test_a_truncated_file_is_retried_then_reported(tmp_path):
    import httpx

    calls = []

    def short_body(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, content=b"abc", headers={"Content-Length": "10"})

    settings = MattermostSettings(domain="chat.example.org", token="t", channel_ids=["a" * 26])
    client = MattermostClient(
        settings,
        transport=httpx.MockTransport(short_body),
        retry=RetryPolicy(attempts=3, base_delay=0),
    )
    with pytest.raises(MattermostError, match=r"GET /files/f: gave up after 3 attempts"):
        client.download("f", io.BytesIO())
    assert len(calls) == 3
    # one level up, the message goes without the file, the failure is recorded, no part is kept
    from mattermost_connector.attachments import download_attachments
    from mattermost_connector.kinds import AttachmentFate

    post = {
        "id": "p",
        "metadata": {"files": [{"id": "f", "name": "a.bin", "size": 10, "mime_type": "x/y"}]},
    }
    (found,) = download_attachments(client, [post], tmp_path, 100)["p"]
    assert found.status == AttachmentFate.FAILED and "shorter than Content-Length" in found.error
    assert list(tmp_path.iterdir()) == []


def test_a_429_one_channel_gets_makes_the_channels_already_waiting_wait_for_it_too():
    """Channels run 4 at once on one client, and Mattermost limits per token: a thread
    already waiting for a spent budget to reset, when another's request comes back 429 with
    Retry-After, waits for that too instead of sending and being refused on its own.
    (Mattermost answers Retry-After and X-RateLimit-Reset in whole seconds: throttled's
    http.go, see tests/mattermost_sim.py `rate_limit`.)"""
    import threading

    import httpx

    in_flight, waiting = threading.Event(), threading.Event()
    arrivals: dict[str, float] = {}
    refused_at: list[float] = []

    def server(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/pace"):  # a budget spent: the next request after 1 s
            return httpx.Response(
                200, json={}, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}
            )
        if path.endswith("/a") and not refused_at:  # a request in flight, then refused
            in_flight.set()
            assert waiting.wait(5)
            refused_at.append(time.monotonic())
            return httpx.Response(429, text="limit exceeded\n", headers={"Retry-After": "2"})
        arrivals.setdefault(path, time.monotonic())
        return httpx.Response(200, json={})

    def sleep(seconds: float) -> None:
        waiting.set()
        time.sleep(seconds)

    settings = MattermostSettings(domain="chat.example.org", token="t", channel_ids=["a" * 26])
    client = MattermostClient(settings, transport=httpx.MockTransport(server), sleep=sleep)
    first = threading.Thread(target=client.channel, args=("a",))
    first.start()
    assert in_flight.wait(5)
    client.channel("pace")
    client.channel("b")  # waits for the spent budget; meanwhile "a" is refused
    first.join(10)
    assert arrivals["/api/v4/channels/b"] >= refused_at[0] + 2 - 0.05
    assert arrivals["/api/v4/channels/a"] >= refused_at[0] + 2 - 0.05


def test_https_against_a_plain_http_server_says_the_protocol(demo: Demo, workdir, monkeypatch):
    from mattermost_connector.check import preflight
    from tests.support import settings_with

    settings = settings_with(
        monkeypatch,
        MATTERMOST_DOMAIN="127.0.0.1",
        MATTERMOST_PORT=str(demo.sim.port),
        MATTERMOST_PROTOCOL="https",
        MATTERMOST_TOKEN=demo.token,
    )
    with pytest.raises(MattermostError) as caught:
        preflight(settings)
    assert str(caught.value).endswith(
        "the server answers in plain HTTP, not HTTPS: set MATTERMOST_PROTOCOL=http "
        "(or check MATTERMOST_PORT)"
    )


def test_a_host_that_is_not_mattermost_is_named_by_its_page_title_not_its_markup():
    import httpx

    page = "<!DOCTYPE HTML><html><head><title>Error response</title></head><body>" + (
        "<p>Error code: 404</p>" * 200
    )

    def web_server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text=page, headers={"Content-Type": "text/html"})

    settings = MattermostSettings(domain="chat.example.org", token="t", channel_ids=["a" * 26])
    client = MattermostClient(settings, transport=httpx.MockTransport(web_server))
    with pytest.raises(MattermostError) as caught:
        client.me()
    assert str(caught.value) == (
        "GET /api/v4/users/me: 404 an HTML page ('Error response'), not Mattermost's API: "
        "check MATTERMOST_DOMAIN, MATTERMOST_PORT and MATTERMOST_BASEPATH"
    )
