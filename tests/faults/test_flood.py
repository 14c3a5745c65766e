"""One tenant floods: 150 concurrent `mode: sync` requests and 300 idle SSE streams. Another
tenant's requests all succeed meanwhile, its answers are not stuck behind the flood, and
nobody gets a 500: waiting holds no database connection and no pooled Redis connection,
and generation is shared fairly between tenants (per-tenant queues served round-robin, a
per-tenant cap on answers running)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from conversations.models import Message, MessageStatus
from conversations.services import api_key_create, tenant_create
from devtools.local_bedrock import LocalBedrockServer
from devtools.processes import ManagedProcess
from tests.faults.conftest import start_web_server
from tests.faults.turns import wait_all_final
from tests.support.live_api import Api

pytestmark = pytest.mark.e2e

SYNC_REQUESTS = 150
IDLE_STREAMS = 300


def test_one_tenants_flood_leaves_another_tenant_untouched(
    tenant, api: Api, bedrock: LocalBedrockServer, launch_worker
) -> None:
    bedrock.configure(seconds_per_token=0.02, answer_tokens=60)  # 1.2 s answers
    launch_worker(concurrency=4, GENERATION_TENANT_MAX_RUNNING="3")
    processes: list[ManagedProcess] = []
    web, base_url = start_web_server(GENERATION_SYNC_WAIT_SECONDS="15", DATABASE_POOL_MAX_SIZE="20")
    processes.append(web)
    try:
        flooder = Api(base_url=base_url, key=api.key)
        victim_tenant = tenant_create(slug="bystander")
        victim = Api(base_url=base_url, key=api_key_create(tenant=victim_tenant).secret)
        conversations = [flooder.new_conversation() for _ in range(SYNC_REQUESTS)]

        flood_statuses: Counter[int] = Counter()
        lock = threading.Lock()
        start = threading.Barrier(SYNC_REQUESTS + 1)

        def sync_request(conversation: str) -> None:
            start.wait(timeout=60)
            try:
                response = flooder.send(conversation, "Flood!", mode="sync", max_gen_len=64)
                status = response.status_code
            except requests.RequestException:
                status = -1
            with lock:
                flood_statuses[status] += 1

        stream_statuses: Counter[int] = Counter()
        stop_streams = threading.Event()

        def idle_stream(answer_id: str) -> None:
            try:
                with requests.get(
                    f"{base_url}/api/v1/messages/{answer_id}/stream",
                    headers=flooder.headers,
                    stream=True,
                    timeout=(10, 90),
                ) as response:
                    with lock:
                        stream_statuses[response.status_code] += 1
                    for _ in response.iter_lines():
                        if stop_streams.is_set():
                            return
            except requests.RequestException:
                with lock:
                    stream_statuses[-1] += 1

        flood = [threading.Thread(target=sync_request, args=(c,)) for c in conversations]
        for thread in flood:
            thread.start()
        start.wait(timeout=60)
        # The streams: on the flood's answers once they exist (two per answer).
        answer_ids = wait_for_answers(conversations, timeout=60)
        streams = [
            threading.Thread(target=idle_stream, args=(answer_ids[i % len(answer_ids)],))
            for i in range(IDLE_STREAMS)
        ]
        for thread in streams:
            thread.start()

        # Meanwhile the bystander chats: every request must succeed, and its answers
        # must not wait for the flood's backlog.
        victim_codes: list[int] = []
        victim_answers: list[str] = []
        victim_waits: list[float] = []
        for turn in range(8):
            victim_codes.append(victim.get("/api/v1/tenant").status_code)
            conversation = victim.post(
                "/api/v1/conversations", {"model": "meta.llama3-1-8b-instruct-v1:0"}
            )
            victim_codes.append(conversation.status_code)
            sent = victim.send(conversation.json()["id"], f"Hello {turn}", max_gen_len=16)
            victim_codes.append(sent.status_code)
            answer_id = sent.json()["assistant_message"]["id"]
            victim_answers.append(answer_id)
            began = time.monotonic()
            wait_all_final([answer_id], timeout=60)
            victim_waits.append(time.monotonic() - began)

        backlog = Message.objects.filter(
            tenant__slug="e2e", status__in=[MessageStatus.QUEUED, MessageStatus.RUNNING]
        ).count()
        for thread in flood:
            thread.join(timeout=120)
        stop_streams.set()

        assert all(200 <= code < 300 for code in victim_codes), victim_codes
        statuses = set(
            Message.objects.filter(pk__in=victim_answers).values_list("status", flat=True)
        )
        assert statuses == {MessageStatus.COMPLETED}
        # A bystander's answer took seconds at most, while the flood had a backlog of
        # dozens of answers that would have taken a minute to drain first come first served.
        assert backlog > 20, backlog
        assert max(victim_waits) < 10, victim_waits
        assert set(flood_statuses) <= {201, 202}, flood_statuses
        assert set(stream_statuses) == {200}, stream_statuses
    finally:
        for process in processes:
            process.stop()


def wait_for_answers(conversations: list[str], *, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = list(
            Message.objects.filter(conversation_id__in=conversations, role="assistant").values_list(
                "pk", flat=True
            )
        )
        if len(answers) >= len(conversations):
            return [str(answer) for answer in answers]
        time.sleep(0.2)
    pytest.fail("the flood's answers were not all created")
