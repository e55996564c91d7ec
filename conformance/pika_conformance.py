#!/usr/bin/env python3
"""AMQP 0-9-1 client-visible conformance checks using pika (BlockingConnection).

Runs against the broker at $AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
prints one "PASS name" / "FAIL name: reason" line per check and finishes with
"N passed, M failed".  Exit status is non-zero if any check failed.

All expectations are what RabbitMQ 3.x does (see RABBITMQ_BEHAVIOUR.md).
"""
import os
import random
import string
import sys
import time
import traceback

import pika
from pika.exceptions import ChannelClosedByBroker, UnroutableError

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RUN = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(8))

RESULTS = []
_created_queues = set()
_created_exchanges = set()


def name(kind):
    return "conf-pika-%s-%s-%s" % (RUN, kind, "".join(random.choice(string.ascii_lowercase) for _ in range(5)))


def connect():
    params = pika.URLParameters(URL)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 10
    return pika.BlockingConnection(params)


class Ctx:
    """One connection + channel per check (fresh state each time)."""

    def __init__(self):
        self.conn = connect()
        self.ch = self.conn.channel()

    def new_channel(self):
        self.ch = self.conn.channel()
        return self.ch

    def exchange(self, etype, **kw):
        x = name("x")
        self.ch.exchange_declare(x, exchange_type=etype, **kw)
        _created_exchanges.add(x)
        return x

    def queue(self, qname=None, **kw):
        r = self.ch.queue_declare(qname if qname is not None else name("q"), **kw)
        _created_queues.add(r.method.queue)
        return r.method.queue

    def close(self):
        try:
            if self.conn.is_open:
                self.conn.close()
        except Exception:
            pass


def check(fn):
    label = fn.__name__.replace("test_", "")
    ctx = None
    try:
        ctx = Ctx()
        fn(ctx)
        RESULTS.append((label, True, ""))
        print("PASS %s" % label)
    except Exception as e:  # noqa
        msg = "%s: %s" % (type(e).__name__, e)
        if os.environ.get("CONFORMANCE_DEBUG"):
            traceback.print_exc()
        RESULTS.append((label, False, msg))
        print("FAIL %s: %s" % (label, msg))
    finally:
        if ctx:
            ctx.close()
    sys.stdout.flush()
    return fn


def eq(actual, expected, what=""):
    if actual != expected:
        raise AssertionError("%s expected %r, got %r" % (what, expected, actual))


def expect_channel_close(fn, code, text_prefix):
    try:
        fn()
    except ChannelClosedByBroker as e:
        if e.reply_code != code or not e.reply_text.startswith(text_prefix):
            raise AssertionError("expected channel close %d %r..., got %d %r" % (code, text_prefix, e.reply_code, e.reply_text))
        return e
    raise AssertionError("expected channel close %d, but the call succeeded" % code)


def get_body(ch, q, auto_ack=True, tries=20):
    """basic.get with a short retry (delivery into a queue is async on some brokers)."""
    for _ in range(tries):
        m, p, b = ch.basic_get(q, auto_ack=auto_ack)
        if m is not None:
            return m, p, b
        time.sleep(0.05)
    return None, None, None


def drain(ch, q):
    out = []
    while True:
        m, p, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(b)


def settle(ctx, seconds=0.2):
    ctx.conn.process_data_events(time_limit=seconds)


def msg_count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def wait_count(ch, q, n, timeout=3.0):
    deadline = time.time() + timeout
    c = msg_count(ch, q)
    while c != n and time.time() < deadline:
        time.sleep(0.05)
        c = msg_count(ch, q)
    return c


# ----------------------------------------------------------------------------
# Declarations
# ----------------------------------------------------------------------------
@check
def test_exchange_declare_direct(ctx):
    x = ctx.exchange("direct")
    ctx.ch.exchange_declare(x, exchange_type="direct", passive=True)


@check
def test_exchange_declare_fanout(ctx):
    x = ctx.exchange("fanout")
    ctx.ch.exchange_declare(x, exchange_type="fanout", passive=True)


@check
def test_exchange_declare_topic(ctx):
    x = ctx.exchange("topic")
    ctx.ch.exchange_declare(x, exchange_type="topic", passive=True)


@check
def test_exchange_declare_headers(ctx):
    x = ctx.exchange("headers")
    ctx.ch.exchange_declare(x, exchange_type="headers", passive=True)


@check
def test_exchange_redeclare_equivalent_ok(ctx):
    x = ctx.exchange("topic", durable=False, auto_delete=False)
    ctx.ch.exchange_declare(x, exchange_type="topic", durable=False, auto_delete=False)


@check
def test_exchange_declare_amq_direct_same_flags_ok(ctx):
    ctx.ch.exchange_declare("amq.direct", exchange_type="direct", durable=True)
    ctx.ch.exchange_declare("amq.topic", passive=True)


@check
def test_exchange_delete_missing_ok(ctx):
    ctx.ch.exchange_delete(name("x-missing"))


@check
def test_queue_declare_named(ctx):
    q = name("q")
    r = ctx.ch.queue_declare(q)
    _created_queues.add(q)
    eq(r.method.queue, q, "queue name")
    eq(r.method.message_count, 0, "message_count")
    eq(r.method.consumer_count, 0, "consumer_count")


@check
def test_queue_declare_server_named(ctx):
    r = ctx.ch.queue_declare("", exclusive=True)
    qn = r.method.queue
    if not qn.startswith("amq.gen-"):
        raise AssertionError("server-named queue %r does not start with amq.gen-" % qn)
    eq(len(qn), 30, "server-named queue name length")
    ctx.ch.queue_declare(qn, passive=True)


@check
def test_queue_declare_ok_counts(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    for i in range(3):
        ctx.ch.basic_publish("", q, b"m%d" % i)
    r = ctx.ch.queue_declare(q, passive=True)
    eq(r.method.message_count, 3, "message_count")
    ctx.ch.basic_consume(q, lambda *a: None, auto_ack=False)
    r = ctx.ch.queue_declare(q, passive=True)
    eq(r.method.consumer_count, 1, "consumer_count")


@check
def test_queue_purge_and_delete_counts(ctx):
    q = ctx.queue()
    ctx.ch.confirm_delivery()
    for i in range(4):
        ctx.ch.basic_publish("", q, b"m")
    eq(ctx.ch.queue_purge(q).method.message_count, 4, "purge-ok message_count")
    ctx.ch.basic_publish("", q, b"m")
    eq(ctx.ch.queue_delete(q).method.message_count, 1, "delete-ok message_count")
    _created_queues.discard(q)


@check
def test_queue_delete_missing_ok(ctx):
    r = ctx.ch.queue_delete(name("q-missing"))
    eq(r.method.message_count, 0, "delete-ok message_count")


@check
def test_queue_unbind_nonexistent_ok(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.queue_unbind(q, "amq.direct", routing_key="never-bound")


# ----------------------------------------------------------------------------
# Routing / publish / consume
# ----------------------------------------------------------------------------
@check
def test_default_exchange_routing_and_properties(ctx):
    q = ctx.queue(exclusive=True)
    props = pika.BasicProperties(content_type="text/plain", delivery_mode=2, headers={"h": "v", "n": 7},
                                 correlation_id="cid", reply_to="rt", message_id="mid", priority=3,
                                 type="t", app_id="app", expiration="60000", timestamp=1700000000)
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish("", q, b"hello", props)
    m, p, b = get_body(ctx.ch, q)
    eq(b, b"hello", "body")
    eq(m.exchange, "", "exchange")
    eq(m.routing_key, q, "routing_key")
    eq(m.redelivered, False, "redelivered")
    for f in ("content_type", "delivery_mode", "headers", "correlation_id", "reply_to", "message_id",
              "priority", "type", "app_id", "expiration", "timestamp"):
        eq(getattr(p, f), getattr(props, f), "property " + f)


@check
def test_direct_bind_publish_consume_manual_ack(ctx):
    x = ctx.exchange("direct")
    q = ctx.queue(exclusive=True)
    ctx.ch.queue_bind(q, x, routing_key="rk")
    ctx.ch.confirm_delivery()
    for i in range(3):
        ctx.ch.basic_publish(x, "rk", b"m%d" % i)
    ctx.ch.basic_publish(x, "other", b"nope")
    got = []
    tags = []

    def on_msg(ch, m, p, b):
        got.append(b)
        tags.append(m.delivery_tag)
        eq(m.exchange, x, "deliver exchange")
        eq(m.routing_key, "rk", "deliver routing_key")

    ctag = ctx.ch.basic_consume(q, on_msg, auto_ack=False)
    deadline = time.time() + 3
    while len(got) < 3 and time.time() < deadline:
        ctx.conn.process_data_events(time_limit=0.1)
    eq(got, [b"m0", b"m1", b"m2"], "delivered bodies (in order)")
    eq(tags, [1, 2, 3], "delivery tags")
    eq(msg_count(ctx.ch, q), 0, "ready count while unacked")
    ctx.ch.basic_ack(tags[-1], multiple=True)
    ctx.ch.basic_cancel(ctag)
    settle(ctx)
    eq(msg_count(ctx.ch, q), 0, "count after ack")


@check
def test_unacked_requeued_on_channel_close(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish("", q, b"a")
    m, p, b = get_body(ctx.ch, q, auto_ack=False)
    eq(m.redelivered, False, "first delivery redelivered")
    ctx.ch.close()
    ch2 = ctx.new_channel()
    m, p, b = get_body(ch2, q)
    eq(b, b"a", "requeued body")
    eq(m.redelivered, True, "redelivered after channel close")


@check
def test_basic_get_and_get_empty(ctx):
    q = ctx.queue(exclusive=True)
    m, p, b = ctx.ch.basic_get(q)
    eq(m, None, "get on empty queue")
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish("", q, b"one")
    ctx.ch.basic_publish("", q, b"two")
    m, p, b = ctx.ch.basic_get(q, auto_ack=False)
    eq(b, b"one", "first body")
    eq(m.message_count, 1, "get-ok message_count (remaining)")
    eq(m.delivery_tag, 1, "delivery tag")
    ctx.ch.basic_ack(m.delivery_tag)
    m, p, b = ctx.ch.basic_get(q, auto_ack=True)
    eq(b, b"two", "second body")
    eq(m.message_count, 0, "get-ok message_count")


@check
def test_nack_requeue_redelivered(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish("", q, b"m0")
    ctx.ch.basic_publish("", q, b"m1")
    m, p, b = ctx.ch.basic_get(q, auto_ack=False)
    eq((b, m.redelivered), (b"m0", False), "first get")
    ctx.ch.basic_nack(m.delivery_tag, requeue=True)
    m, p, b = get_body(ctx.ch, q, auto_ack=False)
    eq((b, m.redelivered), (b"m0", True), "after nack requeue (back at head, redelivered)")
    ctx.ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, b = get_body(ctx.ch, q, auto_ack=True)
    eq((b, m.redelivered), (b"m1", False), "after reject requeue=false (dropped)")
    eq(msg_count(ctx.ch, q), 0, "queue empty")


@check
def test_nack_multiple_requeue(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    for i in range(3):
        ctx.ch.basic_publish("", q, b"m%d" % i)
    tags = [ctx.ch.basic_get(q, auto_ack=False)[0].delivery_tag for _ in range(3)]
    ctx.ch.basic_nack(tags[1], multiple=True, requeue=True)
    eq(wait_count(ctx.ch, q, 2), 2, "two requeued")
    ctx.ch.basic_ack(tags[2])
    got = drain(ctx.ch, q)
    eq(got, [b"m0", b"m1"], "requeued order")


@check
def test_topic_routing_star_and_hash(ctx):
    x = ctx.exchange("topic")
    qs = {}
    patterns = {"star": "a.*.c", "hash_tail": "a.#", "hash_mid": "a.#.c", "hash_only": "#", "star_only": "*",
                "exact": "a.b.c", "star_first": "*.b.#"}
    for k, pat in patterns.items():
        qs[k] = ctx.queue(exclusive=True)
        ctx.ch.queue_bind(qs[k], x, routing_key=pat)
    ctx.ch.confirm_delivery()
    keys = ["a.b.c", "a.c", "a", "a.b.b.c", "a.b", "x.b.c", "b", "", "a.b.c.d", "x.b"]
    for k in keys:
        ctx.ch.basic_publish(x, k, k.encode() or b"<empty>")
    expected = {
        "star": ["a.b.c"],
        "hash_tail": ["a.b.c", "a.c", "a", "a.b.b.c", "a.b", "a.b.c.d"],
        "hash_mid": ["a.b.c", "a.c", "a.b.b.c"],
        "hash_only": keys,
        "star_only": ["a", "b"],
        "exact": ["a.b.c"],
        "star_first": ["a.b.c", "a.b.b.c", "a.b", "x.b.c", "a.b.c.d", "x.b"],
    }
    for k, exp in expected.items():
        got = [b.decode() for b in drain(ctx.ch, qs[k])]
        got = ["" if g == "<empty>" else g for g in got]
        eq(got, exp, "topic pattern %r" % patterns[k])


@check
def test_topic_hash_matches_zero_words(ctx):
    x = ctx.exchange("topic")
    q = ctx.queue(exclusive=True)
    ctx.ch.queue_bind(q, x, routing_key="logs.#")
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish(x, "logs", b"zero")
    ctx.ch.basic_publish(x, "logs.x.y", b"two")
    ctx.ch.basic_publish(x, "logsx", b"no")
    eq(drain(ctx.ch, q), [b"zero", b"two"], "logs.# matches")


@check
def test_fanout_to_several_queues(ctx):
    x = ctx.exchange("fanout")
    qs = [ctx.queue(exclusive=True) for _ in range(3)]
    for q in qs:
        ctx.ch.queue_bind(q, x, routing_key="ignored-%s" % q[-3:])
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish(x, "anything", b"f1")
    for q in qs:
        m, p, b = get_body(ctx.ch, q)
        eq(b, b"f1", "fanout body in %s" % q)
        eq(m.routing_key, "anything", "routing key preserved")


@check
def test_headers_exchange_all_any(ctx):
    x = ctx.exchange("headers")
    q_all = ctx.queue(exclusive=True)
    q_any = ctx.queue(exclusive=True)
    ctx.ch.queue_bind(q_all, x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ctx.ch.queue_bind(q_any, x, arguments={"x-match": "any", "format": "pdf", "type": "report"})
    ctx.ch.confirm_delivery()

    def pub(body, headers):
        ctx.ch.basic_publish(x, "", body, pika.BasicProperties(headers=headers))

    pub(b"both", {"format": "pdf", "type": "report", "extra": 1})
    pub(b"format-only", {"format": "pdf"})
    pub(b"wrong-value", {"format": "zip", "type": "log"})
    pub(b"none", None)
    eq(drain(ctx.ch, q_all), [b"both"], "x-match all")
    eq(drain(ctx.ch, q_any), [b"both", b"format-only"], "x-match any")


@check
def test_exchange_to_exchange_binding(ctx):
    src = ctx.exchange("direct")
    dst = ctx.exchange("fanout")
    q = ctx.queue(exclusive=True)
    ctx.ch.exchange_bind(dst, src, routing_key="k")
    ctx.ch.queue_bind(q, dst)
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish(src, "k", b"via-e2e")
    ctx.ch.basic_publish(src, "other", b"nope")
    eq(drain(ctx.ch, q), [b"via-e2e"], "e2e routed")


@check
def test_publisher_confirms_every_publish(ctx):
    q = ctx.queue(exclusive=True)
    acks = []
    # Use the low-level confirm callback path via select_connection-like counting:
    ctx.ch.confirm_delivery()
    n = 50
    for i in range(n):
        ctx.ch.basic_publish("", q, b"c%d" % i)  # raises if nacked
        acks.append(i)
    eq(len(acks), n, "confirmed publishes")
    eq(wait_count(ctx.ch, q, n), n, "messages in queue")


@check
def test_publisher_confirm_unroutable_nonmandatory_is_acked(ctx):
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish("amq.direct", name("nokey"), b"x")  # no exception == acked


@check
def test_mandatory_unroutable_returned(ctx):
    returned = []
    ctx.ch.add_on_return_callback(lambda ch, m, p, b: returned.append((m, p, b)))
    rk = name("nokey")
    ctx.ch.basic_publish("amq.direct", rk, b"ret", pika.BasicProperties(message_id="r1"), mandatory=True)
    deadline = time.time() + 3
    while not returned and time.time() < deadline:
        ctx.conn.process_data_events(time_limit=0.1)
    if not returned:
        raise AssertionError("no basic.return received")
    m, p, b = returned[0]
    eq(m.reply_code, 312, "reply_code")
    eq(m.reply_text, "NO_ROUTE", "reply_text")
    eq(m.exchange, "amq.direct", "exchange")
    eq(m.routing_key, rk, "routing_key")
    eq(b, b"ret", "returned body")
    eq(p.message_id, "r1", "returned properties")


@check
def test_mandatory_unroutable_in_confirm_mode(ctx):
    ctx.ch.confirm_delivery()
    try:
        ctx.ch.basic_publish("amq.direct", name("nokey"), b"x", mandatory=True)
    except UnroutableError as e:
        eq(len(e.messages), 1, "returned messages")
        eq(e.messages[0].method.reply_code, 312, "reply code")
        return
    raise AssertionError("expected UnroutableError (basic.return before basic.ack)")


@check
def test_mandatory_routable_not_returned(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish("", q, b"ok", mandatory=True)
    eq(msg_count(ctx.ch, q), 1, "delivered")


# ----------------------------------------------------------------------------
# Error cases
# ----------------------------------------------------------------------------
@check
def test_404_passive_declare_missing_queue(ctx):
    q = name("missing")
    expect_channel_close(lambda: ctx.ch.queue_declare(q, passive=True), 404,
                         "NOT_FOUND - no queue '%s' in vhost '/'" % q)


@check
def test_404_passive_declare_missing_exchange(ctx):
    x = name("missing")
    expect_channel_close(lambda: ctx.ch.exchange_declare(x, passive=True), 404,
                         "NOT_FOUND - no exchange '%s' in vhost '/'" % x)


@check
def test_404_bind_to_missing_exchange(ctx):
    q = ctx.queue(exclusive=True)
    x = name("missing")
    expect_channel_close(lambda: ctx.ch.queue_bind(q, x, routing_key="k"), 404,
                         "NOT_FOUND - no exchange '%s' in vhost '/'" % x)


@check
def test_404_consume_missing_queue(ctx):
    q = name("missing")
    expect_channel_close(lambda: ctx.ch.basic_consume(q, lambda *a: None), 404,
                         "NOT_FOUND - no queue '%s' in vhost '/'" % q)


@check
def test_404_publish_to_missing_exchange(ctx):
    x = name("missing")
    ctx.ch.confirm_delivery()
    expect_channel_close(lambda: ctx.ch.basic_publish(x, "k", b"x"), 404,
                         "NOT_FOUND - no exchange '%s' in vhost '/'" % x)


@check
def test_406_inequivalent_exchange_type(ctx):
    x = ctx.exchange("direct")
    expect_channel_close(lambda: ctx.ch.exchange_declare(x, exchange_type="fanout"), 406,
                         "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '%s' in vhost '/': "
                         "received 'fanout' but current is 'direct'" % x)


@check
def test_406_inequivalent_queue_durable(ctx):
    q = ctx.queue(durable=False)
    expect_channel_close(lambda: ctx.ch.queue_declare(q, durable=True), 406,
                         "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s' in vhost '/': "
                         "received 'true' but current is 'false'" % q)


@check
def test_406_inequivalent_queue_argument(ctx):
    q = ctx.queue(arguments={"x-message-ttl": 1000})
    expect_channel_close(lambda: ctx.ch.queue_declare(q, arguments={"x-message-ttl": 2000}), 406,
                         "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in vhost '/': "
                         "received '2000' but current is '1000'" % q)


@check
def test_406_unknown_delivery_tag(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.basic_ack(42)
    expect_channel_close(lambda: ctx.ch.queue_declare(q, passive=True), 406,
                         "PRECONDITION_FAILED - unknown delivery tag 42")


@check
def test_403_amq_prefix_exchange(ctx):
    x = "amq.conf-" + RUN
    expect_channel_close(lambda: ctx.ch.exchange_declare(x, exchange_type="direct"), 403,
                         "ACCESS_REFUSED - exchange name '%s' contains reserved prefix 'amq.*'" % x)


@check
def test_403_amq_prefix_queue(ctx):
    q = "amq.conf-" + RUN
    expect_channel_close(lambda: ctx.ch.queue_declare(q), 403,
                         "ACCESS_REFUSED - queue name '%s' contains reserved prefix 'amq.*'" % q)


@check
def test_403_delete_amq_direct(ctx):
    expect_channel_close(lambda: ctx.ch.exchange_delete("amq.direct"), 403,
                         "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed")


@check
def test_403_bind_to_default_exchange(ctx):
    q = ctx.queue(exclusive=True)
    expect_channel_close(lambda: ctx.ch.queue_bind(q, "", routing_key="k"), 403,
                         "ACCESS_REFUSED - operation not permitted on the default exchange")


@check
def test_406_queue_delete_if_empty(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish("", q, b"x")
    expect_channel_close(lambda: ctx.ch.queue_delete(q, if_empty=True), 406,
                         "PRECONDITION_FAILED - queue '%s' in vhost '/' not empty" % q)


@check
def test_406_tx_commit_without_select(ctx):
    expect_channel_close(lambda: ctx.ch.tx_commit(), 406, "PRECONDITION_FAILED - channel is not transactional")


@check
def test_exclusive_queue_locked_405_from_other_connection(ctx):
    q = ctx.queue(exclusive=True)
    other = connect()
    try:
        och = other.channel()
        expect_channel_close(lambda: och.queue_declare(q, passive=True), 405,
                             "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' in vhost '/'" % q)
        och = other.channel()
        expect_channel_close(lambda: och.basic_consume(q, lambda *a: None), 405, "RESOURCE_LOCKED")
        och = other.channel()
        expect_channel_close(lambda: och.queue_declare(q, exclusive=True), 405, "RESOURCE_LOCKED")
        # the owner is unaffected
        ctx.ch.queue_declare(q, passive=True)
    finally:
        other.close()


@check
def test_exclusive_queue_deleted_when_owner_closes(ctx):
    q = ctx.queue(exclusive=True)
    ctx.conn.close()
    time.sleep(0.2)
    ctx2 = Ctx()
    try:
        expect_channel_close(lambda: ctx2.ch.queue_declare(q, passive=True), 404, "NOT_FOUND")
    finally:
        ctx2.close()


@check
def test_channel_usable_after_channel_error(ctx):
    expect_channel_close(lambda: ctx.ch.queue_declare(name("missing"), passive=True), 404, "NOT_FOUND")
    ch2 = ctx.new_channel()
    ch2.queue_declare("", exclusive=True)


# ----------------------------------------------------------------------------
# Transactions, QoS, consumers
# ----------------------------------------------------------------------------
@check
def test_tx_commit_and_rollback(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.tx_select()
    ctx.ch.basic_publish("", q, b"t1")
    other = ctx.conn.channel()
    eq(msg_count(other, q), 0, "not visible before commit")
    ctx.ch.tx_commit()
    eq(wait_count(other, q, 1), 1, "visible after commit")
    ctx.ch.basic_publish("", q, b"t2")
    ctx.ch.tx_rollback()
    time.sleep(0.1)
    eq(msg_count(other, q), 1, "rolled back publish discarded")
    # acks are transactional too
    m, p, b = ctx.ch.basic_get(q, auto_ack=False)
    eq(b, b"t1", "body")
    ctx.ch.basic_ack(m.delivery_tag)
    ctx.ch.tx_rollback()
    ctx.ch.tx_commit()
    ctx.ch.close()  # unacked (ack rolled back) -> requeued
    eq(wait_count(other, q, 1), 1, "rolled-back ack leaves message unacked then requeued on close")


@check
def test_prefetch_limit_honoured(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    for i in range(10):
        ctx.ch.basic_publish("", q, b"p%d" % i)
    ctx.ch.basic_qos(prefetch_count=3)
    got = []
    ctx.ch.basic_consume(q, lambda ch, m, p, b: got.append(m.delivery_tag), auto_ack=False)
    settle(ctx, 0.5)
    eq(len(got), 3, "deliveries with prefetch 3 and no acks")
    ctx.ch.basic_ack(got[0])
    settle(ctx, 0.4)
    eq(len(got), 4, "one more after single ack")
    ctx.ch.basic_ack(got[-1], multiple=True)
    settle(ctx, 0.4)
    eq(len(got), 7, "three more after multiple ack")


@check
def test_prefetch_global_is_per_channel(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    for i in range(10):
        ctx.ch.basic_publish("", q, b"g%d" % i)
    ctx.ch.basic_qos(prefetch_count=2, global_qos=False)  # per consumer
    ctx.ch.basic_qos(prefetch_count=3, global_qos=True)   # per channel
    got = {"a": 0, "b": 0}
    ctx.ch.basic_consume(q, lambda *a: got.__setitem__("a", got["a"] + 1), consumer_tag="a")
    ctx.ch.basic_consume(q, lambda *a: got.__setitem__("b", got["b"] + 1), consumer_tag="b")
    settle(ctx, 0.5)
    eq(got["a"] + got["b"], 3, "total deliveries limited by global (channel) prefetch")
    if max(got.values()) > 2:
        raise AssertionError("per-consumer prefetch 2 exceeded: %r" % got)


@check
def test_prefetch_per_consumer(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.confirm_delivery()
    for i in range(10):
        ctx.ch.basic_publish("", q, b"c%d" % i)
    ctx.ch.basic_qos(prefetch_count=2)
    got = {"a": 0, "b": 0}
    ctx.ch.basic_consume(q, lambda *a: got.__setitem__("a", got["a"] + 1), consumer_tag="a")
    ctx.ch.basic_consume(q, lambda *a: got.__setitem__("b", got["b"] + 1), consumer_tag="b")
    settle(ctx, 0.5)
    eq(got, {"a": 2, "b": 2}, "global=false prefetch applies to each consumer")


@check
def test_basic_cancel(ctx):
    q = ctx.queue(exclusive=True)
    tag = ctx.ch.basic_consume(q, lambda *a: None)
    eq(ctx.ch.queue_declare(q, passive=True).method.consumer_count, 1, "consumer_count after consume")
    ctx.ch.basic_cancel(tag)
    eq(ctx.ch.queue_declare(q, passive=True).method.consumer_count, 0, "consumer_count after cancel")


@check
def test_consumer_exclusive_access_refused(ctx):
    q = ctx.queue(exclusive=True)
    ctx.ch.basic_consume(q, lambda *a: None, exclusive=True)
    expect_channel_close(lambda: ctx.ch.basic_consume(q, lambda *a: None), 403,
                         "ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q)


@check
def test_consumer_cancel_notify_on_queue_delete(ctx):
    q = ctx.queue()
    cancelled = []
    ctx.ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ctx.ch.basic_consume(q, lambda *a: None)
    other = connect()
    try:
        other.channel().queue_delete(q)
        _created_queues.discard(q)
    finally:
        other.close()
    deadline = time.time() + 3
    while not cancelled and time.time() < deadline:
        ctx.conn.process_data_events(time_limit=0.1)
    eq(cancelled, [tag], "basic.cancel from broker")


# ----------------------------------------------------------------------------
# TTL, length limits, dead-lettering (RABBITMQ_BEHAVIOUR.md, section TTL/DLX)
# ----------------------------------------------------------------------------
@check
def test_queue_ttl_expires_without_consumers(ctx):
    q = ctx.queue(arguments={"x-message-ttl": 100})
    for i in range(3):
        ctx.ch.basic_publish("", q, b"m%d" % i)
    eq(wait_count(ctx.ch, q, 0), 0, "messages left after the TTL")


@check
def test_invalid_expiration_is_406(ctx):
    q = ctx.queue()
    e = expect_channel_close(
        lambda: (ctx.ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="abc")), msg_count(ctx.ch, q)),
        406, "PRECONDITION_FAILED - invalid expiration 'abc': no_integer")
    eq((e.reply_code, e.reply_text), (406, "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"))


@check
def test_invalid_queue_argument_texts(ctx):
    q = name("q")
    e = expect_channel_close(lambda: ctx.ch.queue_declare(q, arguments={"x-expires": 0}), 406, "PRECONDITION_FAILED")
    eq(e.reply_text, "PRECONDITION_FAILED - invalid arg 'x-expires' for queue '%s' in vhost '/': {value_zero,0}" % q)
    ctx.new_channel()
    e = expect_channel_close(lambda: ctx.ch.queue_declare(q, arguments={"x-overflow": "foo"}), 406, "PRECONDITION_FAILED")
    eq(e.reply_text, "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue '%s' in vhost '/': invalid_overflow" % q)


@check
def test_rejected_message_is_dead_lettered_with_x_death(ctx):
    dlx = ctx.exchange("fanout")
    dead = ctx.queue()
    ctx.ch.queue_bind(dead, dlx)
    src = ctx.queue(arguments={"x-dead-letter-exchange": dlx})
    ctx.ch.basic_publish("", src, b"r1", pika.BasicProperties(headers={"a": 1}, expiration="60000"))
    m, _, _ = get_body(ctx.ch, src, auto_ack=False)
    ctx.ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, b = get_body(ctx.ch, dead)
    eq((m.exchange, m.routing_key, b), (dlx, src, b"r1"), "dead letter")
    eq(p.expiration, None, "expiration removed")
    d = p.headers["x-death"][0]
    eq((d["count"], d["reason"], d["queue"], d["exchange"], d["routing-keys"], d["original-expiration"]),
       (1, "rejected", src, "", [src], "60000"), "x-death entry")
    eq((p.headers["x-first-death-reason"], p.headers["x-first-death-queue"]), ("rejected", src))


@check
def test_expired_messages_take_the_dead_letter_routing_key(ctx):
    dlx = ctx.exchange("direct")
    dead = ctx.queue()
    ctx.ch.queue_bind(dead, dlx, routing_key="gone")
    src = ctx.queue(arguments={"x-message-ttl": 50, "x-dead-letter-exchange": dlx,
                               "x-dead-letter-routing-key": "gone"})
    ctx.ch.basic_publish("", src, b"e1")
    eq(wait_count(ctx.ch, dead, 1), 1, "dead-lettered")
    m, p, b = get_body(ctx.ch, dead)
    eq((m.routing_key, p.headers["x-death"][0]["reason"]), ("gone", "expired"))


@check
def test_max_length_drops_head_and_reject_publish_nacks(ctx):
    q = ctx.queue(arguments={"x-max-length": 2})
    for i in range(5):
        ctx.ch.basic_publish("", q, b"%d" % i)
    eq(wait_count(ctx.ch, q, 2), 2)
    eq(drain(ctx.ch, q), [b"3", b"4"], "the newest stay")
    rp = ctx.queue(arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ctx.ch.confirm_delivery()
    ctx.ch.basic_publish("", rp, b"a")
    try:
        ctx.ch.basic_publish("", rp, b"b")
        raise AssertionError("the second publish was acked")
    except pika.exceptions.NackError:
        pass


@check
def test_x_expires_deletes_an_unused_queue(ctx):
    q = ctx.queue(arguments={"x-expires": 100})
    deadline = time.time() + 3
    while time.time() < deadline:
        # A passive declare renews the lease too: look less often than 100 ms.
        time.sleep(0.3)
        try:
            ctx.ch.queue_declare(q, passive=True)
        except ChannelClosedByBroker as e:
            eq(e.reply_code, 404)
            return
    raise AssertionError("queue with x-expires=100 still there after 3 s")


@check
def test_priority_queue_delivers_highest_first(ctx):
    q = ctx.queue(arguments={"x-max-priority": 5})
    for body, prio in [(b"none-1", None), (b"p3-1", 3), (b"p9", 9), (b"p3-2", 3), (b"p0", 0), (b"p5", 5), (b"none-2", None)]:
        ctx.ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    eq(wait_count(ctx.ch, q, 7), 7)
    eq(drain(ctx.ch, q), [b"p9", b"p5", b"p3-1", b"p3-2", b"none-1", b"p0", b"none-2"], "delivery order")


@check
def test_direct_reply_to_round_trip(ctx):
    requests = ctx.queue()
    got = []
    ctx.ch.basic_consume("amq.rabbitmq.reply-to", lambda ch, m, p, b: got.append((m.routing_key, b, p.correlation_id)), auto_ack=True)
    ctx.ch.basic_publish("", requests, b"ping", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
    other = connect()
    try:
        sch = other.channel()
        m, p, b = get_body(sch, requests)
        if not p.reply_to.startswith("amq.rabbitmq.reply-to."):
            raise AssertionError("reply_to not rewritten: %r" % p.reply_to)
        sch.basic_publish("", p.reply_to, b"pong", pika.BasicProperties(correlation_id=p.correlation_id))
        deadline = time.time() + 3
        while not got and time.time() < deadline:
            ctx.conn.process_data_events(time_limit=0.1)
        eq(got, [(p.reply_to, b"pong", "c1")], "reply delivered")
    finally:
        other.close()


@check
def test_consumer_priorities_and_single_active_consumer(ctx):
    q = ctx.queue()
    got = []
    ctx.ch.basic_qos(prefetch_count=2)
    ctx.ch.basic_consume(q, lambda c_, m, p, b: got.append(("low", b)), consumer_tag="low", arguments={"x-priority": 1})
    ctx.ch.basic_consume(q, lambda c_, m, p, b: got.append(("high", b)), consumer_tag="high", arguments={"x-priority": 10})
    for i in range(5):
        ctx.ch.basic_publish("", q, b"%d" % i)
    deadline = time.time() + 3
    while len(got) < 4 and time.time() < deadline:
        ctx.conn.process_data_events(time_limit=0.1)
    eq(got, [("high", b"0"), ("high", b"1"), ("low", b"2"), ("low", b"3")], "deliveries by consumer priority")
    sac = ctx.queue(arguments={"x-single-active-consumer": True})
    got2 = []
    ch2 = ctx.conn.channel()
    ch2.basic_consume(sac, lambda c_, m, p, b: got2.append(("c1", b)), auto_ack=True, consumer_tag="c1")
    ch2.basic_consume(sac, lambda c_, m, p, b: got2.append(("c2", b)), auto_ack=True, consumer_tag="c2")
    for i in range(3):
        ch2.basic_publish("", sac, b"%d" % i)
    deadline = time.time() + 3
    while len(got2) < 3 and time.time() < deadline:
        ctx.conn.process_data_events(time_limit=0.1)
    eq(got2, [("c1", b"0"), ("c1", b"1"), ("c1", b"2")], "single active consumer")



# ---- connections (issue 10: what client suites tripped over) -------------------
@check
def test_channel_number_65535_opens(ctx):
    # RabbitMQ limits how many channels are open, not their numbers.
    ch = ctx.conn.channel(channel_number=65535)
    eq(ch.channel_number, 65535, "channel number")
    q = ctx.queue()
    ch.basic_publish("", q, b"top")
    eq(get_body(ch, q)[2], b"top", "message through channel 65535")


@check
def test_close_right_after_pipelined_publishes_is_clean(ctx):
    q = ctx.queue()
    for i in range(2000):
        ctx.ch.basic_publish("", q, b"x" * 512)
    ctx.conn.close()  # raises if close-ok never arrives
    eq(ctx.conn.is_closed, True, "closed")


@check
def test_wrong_passwords_do_not_lock_out_the_right_one(ctx):
    params = pika.URLParameters(URL)
    bad = pika.ConnectionParameters(host=params.host, port=params.port, virtual_host=params.virtual_host,
                                    credentials=pika.PlainCredentials(params.credentials.username, "wrong-password"),
                                    socket_timeout=10, connection_attempts=1)
    for _ in range(8):
        try:
            pika.BlockingConnection(bad).close()
            raise AssertionError("a wrong password opened a connection")
        except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError):
            pass
    c = connect()
    eq(c.is_open, True, "the right password still works")
    c.close()


@check
def test_localhost_reaches_the_broker(ctx):
    params = pika.URLParameters(URL)
    for host in ("localhost", "::1"):
        p = pika.ConnectionParameters(host=host, port=params.port, virtual_host=params.virtual_host,
                                      credentials=params.credentials, socket_timeout=10, connection_attempts=1)
        c = pika.BlockingConnection(p)
        eq(c.is_open, True, "connected via %s" % host)
        c.close()


def cleanup():
    try:
        c = connect()
    except Exception:
        return
    for q in _created_queues:
        try:
            ch = c.channel(); ch.queue_delete(q); ch.close()
        except Exception:
            pass
    for x in _created_exchanges:
        try:
            ch = c.channel(); ch.exchange_delete(x); ch.close()
        except Exception:
            pass
    try:
        c.close()
    except Exception:
        pass


if __name__ == "__main__":
    cleanup()
    passed = sum(1 for r in RESULTS if r[1])
    failed = len(RESULTS) - passed
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)
