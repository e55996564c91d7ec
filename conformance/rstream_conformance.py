#!/usr/bin/env python3
"""RabbitMQ Stream protocol checks using rstream, the Python stream client.

Runs against the stream listener at $STREAM_HOST:$STREAM_PORT (default
127.0.0.1:5552, user guest/guest, vhost "/") and, for the super-stream
topology, the AMQP 0-9-1 listener at $AMQP_URL (pika).  Prints one
"PASS name" / "FAIL name: reason" line per check and finishes with
"N passed, M failed"; exit status is non-zero if any check failed.

Every expectation is what RabbitMQ does; RABBITMQ_BEHAVIOUR.md records which
RabbitMQ version each check was run against.  Checks that need a command
RabbitMQ added after the server under test report "SKIP" when the server
answers that it does not know the command (set STREAM_REQUIRE_ALL=1 to make
that a failure, as the warren test does).
"""
import asyncio
import os
import random
import string
import sys
import time
import traceback

import pika
from rstream import (
    AMQPMessage,
    ConsumerOffsetSpecification,
    Consumer,
    OffsetSpecification,
    OffsetType,
    Producer,
    RawMessage,
    RouteType,
    SuperStreamConsumer,
    SuperStreamProducer,
    amqp_decoder,
)
from rstream import exceptions as rexc

HOST = os.environ.get("STREAM_HOST", "127.0.0.1")
PORT = int(os.environ.get("STREAM_PORT", "5552"))
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REQUIRE_ALL = os.environ.get("STREAM_REQUIRE_ALL") == "1"
RUN = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(8))
AUTH = dict(username="guest", password="guest")
WAIT = 10.0

RESULTS = []


def name(kind):
    return "conf-rstream-%s-%s-%s" % (RUN, kind, "".join(random.choice(string.ascii_lowercase) for _ in range(5)))


class Unsupported(Exception):
    """The server does not implement a command this check needs."""


async def wait_for(pred, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.02)


async def consume(stream, spec, expect, **kw):
    """Subscribes with `spec`, collects (offset, body) until `expect` arrive."""
    got = []

    async def on_message(msg, ctx):
        got.append((ctx.offset, bytes(msg)))

    async with Consumer(HOST, PORT, **AUTH) as c:
        await c.subscribe(stream, on_message, offset_specification=spec, **kw)
        await wait_for(lambda: len(got) >= expect, "%d deliveries (got %d)" % (expect, len(got)))
        # Anything beyond `expect` that is already on its way arrives too.
        await asyncio.sleep(0.2)
    return got


async def publish(stream, bodies, publisher_name=None):
    async with Producer(HOST, PORT, **AUTH) as p:
        for b in bodies:
            await p.send_wait(stream, RawMessage(b), publisher_name=publisher_name)


async def fresh_stream(p_or_c):
    s = name("s")
    await p_or_c.create_stream(s)
    return s


# ---------------------------------------------------------------- checks


async def check_publish_confirm_and_consume_first():
    async with Producer(HOST, PORT, **AUTH) as p:
        s = await fresh_stream(p)
        confirmed = []

        async def on_confirm(status):
            if status.is_confirmed:
                confirmed.append(status.message_id)

        for i in range(200):
            await p.send(s, RawMessage(b"m%d" % i), on_publish_confirm=on_confirm)
        await wait_for(lambda: len(confirmed) == 200, "200 confirms (got %d)" % len(confirmed))
    got = await consume(s, ConsumerOffsetSpecification(OffsetType.FIRST, None), 200)
    assert [o for o, _ in got] == list(range(200)), "offsets %r" % [o for o, _ in got][:10]
    assert [b for _, b in got] == [b"m%d" % i for i in range(200)], "bodies out of order"
    await delete(s)


async def check_send_wait_returns_after_confirm():
    async with Producer(HOST, PORT, **AUTH) as p:
        s = await fresh_stream(p)
        for i in range(5):
            await p.send_wait(s, RawMessage(b"w%d" % i))
    got = await consume(s, ConsumerOffsetSpecification(OffsetType.FIRST, None), 5)
    assert [b for _, b in got] == [b"w%d" % i for i in range(5)]
    await delete(s)


async def check_deduplication_by_publisher_name():
    async with Producer(HOST, PORT, **AUTH) as p:
        s = await fresh_stream(p)
        # Explicit publishing ids: 1..5, then 3..7 again; 3, 4, 5 are duplicates.
        for pid in list(range(1, 6)) + list(range(3, 8)):
            await p.send_wait(s, RawMessage(b"d%d" % pid, publishing_id=pid), publisher_name="dedup-p")
        client = await p.default_client
        seq = await client.query_publisher_sequence(s, "dedup-p")
        assert seq == 7, "query_publisher_sequence = %r, want 7" % seq
    got = await consume(s, ConsumerOffsetSpecification(OffsetType.FIRST, None), 7)
    assert [b for _, b in got] == [b"d%d" % i for i in range(1, 8)], "stored %r" % [b for _, b in got]
    # A new producer with the same name continues after the stored sequence.
    async with Producer(HOST, PORT, **AUTH) as p2:
        client = await p2.default_client
        assert await client.query_publisher_sequence(s, "dedup-p") == 7
        assert await client.query_publisher_sequence(s, "never-published") == 0
    await delete(s)


async def check_offset_specifications():
    async with Producer(HOST, PORT, **AUTH) as p:
        s = await fresh_stream(p)
        for i in range(10):
            await p.send_wait(s, RawMessage(b"o%d" % i))
    got = await consume(s, ConsumerOffsetSpecification(OffsetType.OFFSET, 7), 3)
    assert [o for o, _ in got] == [7, 8, 9], "offset 7 gave %r" % [o for o, _ in got]
    # "last" starts at the last chunk: with one message per chunk, offset 9.
    got = await consume(s, ConsumerOffsetSpecification(OffsetType.LAST, None), 1)
    assert got[0][0] <= 9 and got[-1][0] == 9, "last gave %r" % [o for o, _ in got]

    # "next" sees only what is published after it subscribed.
    seen = []

    async def on_message(msg, ctx):
        seen.append((ctx.offset, bytes(msg)))

    async with Consumer(HOST, PORT, **AUTH) as c:
        await c.subscribe(s, on_message, offset_specification=ConsumerOffsetSpecification(OffsetType.NEXT, None))
        await asyncio.sleep(0.3)
        assert seen == [], "next delivered old messages %r" % seen
        await publish(s, [b"after"])
        await wait_for(lambda: len(seen) == 1, "the message published after subscribing")
    assert seen == [(10, b"after")], "next gave %r" % seen
    await delete(s)


async def check_timestamp_offset():
    async with Producer(HOST, PORT, **AUTH) as p:
        s = await fresh_stream(p)
        for i in range(3):
            await p.send_wait(s, RawMessage(b"early%d" % i))
        await asyncio.sleep(1.5)
        cut = int(time.time() * 1000)
        await asyncio.sleep(0.5)
        for i in range(3):
            await p.send_wait(s, RawMessage(b"late%d" % i))
    got = await consume(s, ConsumerOffsetSpecification(OffsetType.TIMESTAMP, cut), 3)
    assert [b for _, b in got] == [b"late0", b"late1", b"late2"], "timestamp gave %r" % got
    await delete(s)


async def check_store_and_query_offset():
    async with Producer(HOST, PORT, **AUTH) as p:
        s = await fresh_stream(p)
        for i in range(10):
            await p.send_wait(s, RawMessage(b"t%d" % i))
    async with Consumer(HOST, PORT, **AUTH) as c:
        try:
            await c.query_offset(s, "tracker")
            raise AssertionError("query_offset of a never-stored reference did not fail")
        except rexc.OffsetNotFound:
            pass
        await c.store_offset(s, "tracker", 6)
        await wait_for_offset(c, s, "tracker", 6)
    # A consumer restarting with the stored offset resumes after it.
    async with Consumer(HOST, PORT, **AUTH) as c:
        stored = await c.query_offset(s, "tracker")
        assert stored == 6, "query_offset = %r" % stored
    got = await consume(s, ConsumerOffsetSpecification(OffsetType.OFFSET, stored + 1), 3, subscriber_name="tracker")
    assert [o for o, _ in got] == [7, 8, 9]
    await delete(s)


async def wait_for_offset(c, s, ref, want):
    # store_offset has no reply; the stored value becomes visible shortly.
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if await c.query_offset(s, ref) == want:
                return
        except rexc.OffsetNotFound:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("stored offset %d never became visible" % want)
        await asyncio.sleep(0.05)


async def check_amqp_message_round_trip():
    async with Producer(HOST, PORT, **AUTH) as p:
        s = await fresh_stream(p)
        msg = AMQPMessage(body=b"amqp-body", application_properties={"k": "v"})
        await p.send_wait(s, msg)
    got = []

    async def on_message(m, ctx):
        got.append(m)

    async with Consumer(HOST, PORT, **AUTH) as c:
        await c.subscribe(
            s, on_message, decoder=amqp_decoder,
            offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
        )
        await wait_for(lambda: got, "the AMQP 1.0 message")
    m = got[0]
    assert body_of(m) == b"amqp-body", "body %r" % (m.body,)
    props = {k.decode() if isinstance(k, bytes) else k: v for k, v in (m.application_properties or {}).items()}
    v = props.get("k")
    assert v in ("v", b"v"), "application properties %r" % m.application_properties
    await delete(s)


async def check_stream_errors():
    async with Producer(HOST, PORT, **AUTH) as p:
        s = await fresh_stream(p)
        try:
            await p.create_stream(s)
            raise AssertionError("creating an existing stream did not fail")
        except rexc.StreamAlreadyExists:
            pass
        await p.create_stream(s, exists_ok=True)
        assert await p.stream_exists(s)
        await p.delete_stream(s)
        assert not await p.stream_exists(s)
        try:
            await p.delete_stream(s)
            raise AssertionError("deleting a missing stream did not fail")
        except rexc.StreamDoesNotExist:
            pass


def amqp_super_stream(n):
    """A super stream laid out over AMQP as RabbitMQ documents it: a direct
    exchange, partition streams bound by key with x-stream-partition-order."""
    sup = name("super")
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.exchange_declare(sup, "direct", durable=True, arguments={"x-super-stream": True})
    parts = []
    for i in range(n):
        q = "%s-%d" % (sup, i)
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "stream"})
        ch.queue_bind(q, sup, routing_key=str(i), arguments={"x-stream-partition-order": i})
        parts.append(q)
    conn.close()
    return sup, parts


def amqp_delete(exchange, queues):
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    for q in queues:
        ch.queue_delete(q)
    if exchange:
        ch.exchange_delete(exchange)
    conn.close()


async def routing_key_of(message):
    return message.application_properties["id"]


async def need_super_streams():
    """Super streams (the partitions and route commands) and single active
    consumer came in RabbitMQ 3.11; older servers cannot answer partitions
    (3.10.8 sends a reply rstream cannot decode).  Asks for the partitions
    of a super stream that does not exist: a server that knows the command
    answers stream-does-not-exist, which rstream turns into an empty list."""
    try:
        async with Producer(HOST, PORT, **AUTH) as p:
            client = await p.default_client
            got = await asyncio.wait_for(client.partitions(name("absent")), timeout=5)
    except Exception as e:
        raise Unsupported("partitions command: %s: %s" % (type(e).__name__, e))
    assert got == [], "partitions of a missing super stream: %r" % got


async def check_super_stream_route_and_partitions():
    await need_super_streams()
    sup, parts = amqp_super_stream(3)
    try:
        async with Producer(HOST, PORT, **AUTH) as p:
            client = await p.default_client
            try:
                got = await client.partitions(sup)
            except rexc.ServerError as e:
                raise Unsupported("partitions: %s" % e)
            assert got == parts, "partitions %r" % got
            assert await client.route("1", sup) == [parts[1]]
    finally:
        amqp_delete(sup, parts)


async def check_super_stream_publish_and_consume():
    await need_super_streams()
    sup, parts = amqp_super_stream(3)
    try:
        got = {}

        async def on_message(msg, ctx):
            got.setdefault(ctx.stream, []).append(body_of(msg))

        async with SuperStreamProducer(
            HOST, PORT, **AUTH, super_stream=sup, routing=RouteType.Hash,
            routing_extractor=routing_key_of,
        ) as sp:
            confirmed = []

            async def on_confirm(status):
                if status.is_confirmed:
                    confirmed.append(status.message_id)

            try:
                for i in range(30):
                    await sp.send(
                        AMQPMessage(body=b"s%d" % i, application_properties={"id": "key-%d" % i}),
                        on_publish_confirm=on_confirm,
                    )
            except rexc.ServerError as e:
                raise Unsupported("super stream publish: %s" % e)
            await wait_for(lambda: len(confirmed) == 30, "30 confirms (got %d)" % len(confirmed))
        async with SuperStreamConsumer(HOST, PORT, **AUTH, super_stream=sup) as sc:
            await sc.subscribe(on_message, decoder=amqp_decoder)
            await wait_for(lambda: sum(map(len, got.values())) >= 30, "30 deliveries")
        assert sorted(b for v in got.values() for b in v) == sorted(b"s%d" % i for i in range(30))
        assert len(got) >= 2, "hash routing put everything in %r" % list(got)
    finally:
        amqp_delete(sup, parts)


async def check_single_active_consumer_on_super_stream():
    await need_super_streams()
    sup, parts = amqp_super_stream(2)
    try:
        got = {"a": [], "b": []}
        active = {"a": set(), "b": set()}

        def handler(who):
            async def on_message(msg, ctx):
                got[who].append((ctx.stream, body_of(msg)))
            return on_message

        def listener(who):
            async def on_update(is_active, ctx):
                if is_active:
                    active[who].add(ctx.stream)
                else:
                    active[who].discard(ctx.stream)
                return OffsetSpecification(OffsetType.NEXT, 0)
            return on_update

        props = {"single-active-consumer": "true", "name": "sac-app", "super-stream": sup}
        nxt = ConsumerOffsetSpecification(OffsetType.NEXT, None)
        a = SuperStreamConsumer(HOST, PORT, **AUTH, super_stream=sup)
        b = SuperStreamConsumer(HOST, PORT, **AUTH, super_stream=sup)
        await a.start()
        await b.start()
        try:
            try:
                await a.subscribe(handler("a"), decoder=amqp_decoder, offset_specification=nxt,
                                  properties=dict(props), consumer_update_listener=listener("a"))
                # Alone in the group, a is active on both partitions.
                await wait_for(lambda: active["a"] == set(parts), "a active on both partitions")
                await b.subscribe(handler("b"), decoder=amqp_decoder, offset_specification=nxt,
                                  properties=dict(props), consumer_update_listener=listener("b"))
            except rexc.ServerError as e:
                raise Unsupported("single active consumer: %s" % e)
            # RabbitMQ's rule: partition i goes to consumer i % 2, so a
            # steps down from partition 1 and b takes it.
            await wait_for(lambda: active["a"] == {parts[0]} and active["b"] == {parts[1]},
                           "one partition each (active sets %r)" % active)
            # (rstream's key routing caches the first key's route, so the
            # messages go to the partitions directly.)
            async with Producer(HOST, PORT, **AUTH) as p:
                for i in range(10):
                    await p.send_wait(parts[i % 2], AMQPMessage(body=b"m%d" % i))
            total = lambda: len(got["a"]) + len(got["b"])
            await wait_for(lambda: total() >= 10, "10 deliveries over both partitions")
            await asyncio.sleep(0.3)
            assert total() == 10, "delivered %d, want each of 10 once" % total()
            assert {st for st, _ in got["a"]} == {parts[0]}, "a read %r" % got["a"]
            assert {st for st, _ in got["b"]} == {parts[1]}, "b read %r" % got["b"]
            # When b goes, a takes partition 1 back and reads what follows.
            await b.close()
            await wait_for(lambda: active["a"] == set(parts), "a to take over partition 1")
            await publish_amqp10(parts[1], b"after-b")
            await wait_for(lambda: (parts[1], b"after-b") in got["a"], "a to read partition 1")
        finally:
            await a.close()
            try:
                await b.close()
            except Exception:
                pass
    finally:
        amqp_delete(sup, parts)


async def publish_amqp10(stream, body):
    async with Producer(HOST, PORT, **AUTH) as p:
        await p.send_wait(stream, AMQPMessage(body=body))


def body_of(m):
    """The data section of a decoded AMQP 1.0 message."""
    return m.body if isinstance(m.body, bytes) else b"".join(m.body)


async def delete(s):
    async with Producer(HOST, PORT, **AUTH) as p:
        await p.delete_stream(s, missing_ok=True)


CHECKS = [
    check_publish_confirm_and_consume_first,
    check_send_wait_returns_after_confirm,
    check_deduplication_by_publisher_name,
    check_offset_specifications,
    check_timestamp_offset,
    check_store_and_query_offset,
    check_amqp_message_round_trip,
    check_stream_errors,
    check_super_stream_route_and_partitions,
    check_super_stream_publish_and_consume,
    check_single_active_consumer_on_super_stream,
]


async def main():
    for check in CHECKS:
        n = check.__name__[len("check_"):]
        try:
            await asyncio.wait_for(check(), timeout=60)
            RESULTS.append((n, True))
            print("PASS", n, flush=True)
        except Unsupported as e:
            if REQUIRE_ALL:
                RESULTS.append((n, False))
                print("FAIL %s: server does not support it: %s" % (n, e), flush=True)
            else:
                print("SKIP %s: server does not support it: %s" % (n, e), flush=True)
        except Exception as e:
            RESULTS.append((n, False))
            print("FAIL %s: %s: %s" % (n, type(e).__name__, e), flush=True)
            traceback.print_exc(file=sys.stderr)
    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print("%d passed, %d failed" % (passed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if asyncio.run(main()) else 0)
