"""The embedded SQLite store survives callers that go away mid-write.

history-svc cancels a call's handler when its client goes away (an orchestrator replica
SIGKILLed mid-append). The store has one connection: a write cancelled while its
transaction was being opened, run or closed must leave that connection outside any
transaction, or every later write fails ("cannot start a transaction within a
transaction") — seen when a killed replica's runs were taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

from chorus.core.errors import ChorusError
from chorus.history.migrate import apply_migrations
from chorus.history.settings import Settings
from chorus.history.stores.sqlite import SqliteStore
from chorus.v1 import chat_pb2, conversation_pb2


def _conversation() -> conversation_pb2.Conversation:
    c = conversation_pb2.Conversation(id=str(uuid.uuid4()), owner="alice", title="t")
    c.create_time.FromMicroseconds(int(time.time() * 1e6))
    c.update_time.CopyFrom(c.create_time)
    return c


def _message() -> conversation_pb2.Message:
    return conversation_pb2.Message(role=chat_pb2.ROLE_USER, content="hi")


def _now_us() -> int:
    return int(time.time() * 1e6)


async def test_a_write_cancelled_at_any_point_leaves_the_store_writable(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, internal_token="t")  # type: ignore[call-arg]
    await asyncio.to_thread(apply_migrations, settings)
    store = await SqliteStore.connect(settings)
    try:
        conversation, _ = await store.create_conversation(_conversation(), "")
        cancelled = 0
        for steps in range(60):  # cancel after 0, 1, 2 … loop steps: every await inside
            # AppendMessages: a read-then-write, so inside BEGIN IMMEDIATE … COMMIT
            write = asyncio.create_task(
                store.append_messages(conversation.id, "alice", [_message()], _now_us())
            )
            for _ in range(steps):
                await asyncio.sleep(0)
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write
            cancelled += write.cancelled()
            stored, created = await store.create_conversation(_conversation(), "")
            assert created and stored.owner == "alice", f"after a cancel at step {steps}"
            appended = await store.append_messages(
                conversation.id, "alice", [_message()], _now_us()
            )
            assert appended is not None and appended.added, f"after a cancel at step {steps}"
        assert cancelled > 0
    except ChorusError as exc:
        raise AssertionError(f"the store stopped writing: {exc.message}") from exc
    finally:
        await store.close()
