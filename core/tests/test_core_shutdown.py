"""SIGTERM: health flips to NOT_SERVING first, in-flight streams drain, exit code 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chorus.core.testing import ServiceProcess
from chorus.v1 import provider_service_pb2 as pb
from chorus.v1 import provider_service_pb2_grpc as pbg

SERVER = str(Path(__file__).with_name("slow_stream_server.py"))


async def test_sigterm_drains_in_flight_stream_after_health_goes_not_serving():
    proc = ServiceProcess(SERVER, env={"CHORUS_DEV_MODE": "true", "CHORUS_GRACE_PERIOD_S": "5"})
    try:
        address = await asyncio.to_thread(proc.wait_ready)
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")
            )
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            stream = pbg.ProviderServiceStub(channel).StreamChat(pb.StreamChatRequest())
            received = [await stream.read()]
            proc.terminate()

            update = await asyncio.wait_for(watch.read(), timeout=5)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            flipped_at = len(received)

            while (item := await stream.read()) is not grpc.aio.EOF:
                received.append(item)
            assert [r.text_delta.text for r in received] == [str(i) for i in range(10)]
            assert flipped_at < 10, "health must flip before the stream finished"
            assert await stream.code() == grpc.StatusCode.OK
        exit_code = await asyncio.to_thread(proc.proc.wait, 10)
        assert exit_code == 0
        assert any('"stopped"' in line for line in proc.lines)
    finally:
        proc.stop()


async def test_new_calls_are_refused_after_sigterm():
    proc = ServiceProcess(SERVER, env={"CHORUS_DEV_MODE": "true", "CHORUS_GRACE_PERIOD_S": "5"})
    try:
        address = await asyncio.to_thread(proc.wait_ready)
        async with grpc.aio.insecure_channel(address) as channel:
            stream = pbg.ProviderServiceStub(channel).StreamChat(pb.StreamChatRequest())
            await stream.read()
            proc.terminate()
            health = health_pb2_grpc.HealthStub(channel)

            async def not_serving() -> bool:
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                except grpc.aio.AioRpcError:
                    return True
                return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

            from chorus.core.testing import wait_for

            await wait_for(not_serving, timeout=5)
            while await stream.read() is not grpc.aio.EOF:
                pass
        assert await asyncio.to_thread(proc.proc.wait, 10) == 0
    finally:
        proc.stop()


def test_a_service_whose_log_pipe_is_gone_still_shuts_down_in_order():
    # Its launcher was killed: the read end of its stderr is closed. Writing a log line
    # then raises BrokenPipeError, which must not cut its shutdown short.
    import json
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "CHORUS_DEV_MODE": "true", "CHORUS_LOG_JSON": "true"}
    proc = subprocess.Popen(
        [sys.executable, SERVER], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # until it serves
            if json.loads(line).get("event") == "listening":
                break
        proc.stderr.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_child_can_log_a_burst_without_waiting_for_its_reader(tmp_path: Path):
    """`ServiceProcess` gives the child's stderr a pipe of `LOG_PIPE_BYTES`: a burst of log
    lines (1,000 run starts log ~670 KB) goes into it in one write, however slow the reader
    thread is to be scheduled (with the kernel's 64 KiB the write stops part-way and a
    service's event loop waits)."""
    burst = 600_000
    script = tmp_path / "burst.py"
    script.write_text(
        "import json, os, sys\n"
        "fd = sys.stderr.fileno()\n"
        "os.set_blocking(fd, False)\n"
        f"blob = (('x' * 99) + chr(10)).encode() * {burst // 100}\n"
        "written = os.write(fd, blob)\n"
        "os.set_blocking(fd, True)\n"
        "line = json.dumps({'event': 'wrote', 'address': str(written)})\n"
        "os.write(fd, (line + chr(10)).encode())\n"
    )
    proc = ServiceProcess(str(script), log_event="wrote")
    try:
        assert proc.wait_ready(60) == str(burst)
    finally:
        proc.stop()
