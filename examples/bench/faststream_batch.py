"""FastStream's batch subscriber on a Redis stream: the comparison point of the asdlc
benchmark's `--faststream` part (examples/bench/faststream.rs starts this in a venv of its own).

Usage: python faststream_batch.py REDIS_URL STREAM EVENTS EVENT_BYTES

Publishes EVENTS messages of EVENT_BYTES bytes with FastStream's own publisher (not timed),
prints `ready`, and waits for a line on stdin. Then it starts a broker whose one subscriber
reads the messages as a consumer group in batches of 100 (`StreamSub(batch=True,
max_records=100)`, each batch acknowledged by FastStream once its handler returns) and does
nothing with them. Once the last one is handled, it prints the CPU seconds this process spent
from the go to then.
"""

import asyncio
import sys
import time

from faststream.redis import RedisBroker, StreamSub


async def main() -> None:
    url, stream, events, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    # No log line per batch (FastStream logs each by default).
    broker = RedisBroker(url, logger=None)
    handled = 0
    done = asyncio.Event()

    @broker.subscriber(
        stream=StreamSub(stream, group="faststream-batch", consumer="c1", batch=True,
                         max_records=100, last_id="0")
    )
    async def on_batch(messages: list[bytes]) -> None:
        nonlocal handled
        handled += len(messages)
        if handled >= events:
            done.set()

    await broker.connect()
    body = b"x" * size
    for start in range(0, events, 100):
        await asyncio.gather(
            *(broker.publish(body, stream=stream) for _ in range(min(100, events - start)))
        )
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu = time.process_time()
    await broker.start()
    await asyncio.wait_for(done.wait(), timeout=600)
    cpu = time.process_time() - cpu
    print(f"{cpu:.6f}", flush=True)
    await broker.stop()


asyncio.run(main())
