#!/usr/bin/env python3
"""Probe of stream queues (x-queue-type: stream) over AMQP 0-9-1 (pika).

Usage: python3 conformance/probe_streams.py [amqp-url]
       (default amqp://guest:guest@127.0.0.1:5672/%2F)

Prints one line per case: `case -> result`, where result is a reply code and
text (CHANNEL CLOSE / CONNECTION CLOSE) or what happened. Every case uses a
fresh connection and channel; queue names carry a random suffix and every
queue the script creates is deleted at the end. Run it against RabbitMQ and
against warren and diff the outputs; RABBITMQ_BEHAVIOUR.md records the
RabbitMQ 3.10.8 results.
"""
import datetime
import struct
import sys
import time
import uuid

import pika
import pika.compat
import pika.data
import pika.exceptions as px

URL = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2F"
SUFFIX = uuid.uuid4().hex[:8]
CREATED = set()
SETTLE = 0.4  # seconds for the stream to make published messages readable


# --- record the AMQP field type of every decoded table entry ------------------
class KTable(dict):
    """A dict that also remembers each key's field-type octet."""
    kinds = None


def _decode_table(encoded, offset):
    result = KTable()
    result.kinds = {}
    tablesize = struct.unpack_from('>I', encoded, offset)[0]
    offset += 4
    limit = offset + tablesize
    while offset < limit:
        key, offset = pika.data.decode_short_string(encoded, offset)
        result.kinds[key] = encoded[offset:offset + 1].decode()
        value, offset = pika.data.decode_value(encoded, offset)
        result[key] = value
    return result, offset


pika.data.decode_table = _decode_table


# --- helpers ------------------------------------------------------------------
def qname(tag):
    n = f"ps-{tag}-{SUFFIX}"
    CREATED.add(n)
    return n


def conn():
    return pika.BlockingConnection(pika.URLParameters(URL))


def err(e):
    if isinstance(e, px.ChannelClosedByBroker):
        return f"CHANNEL CLOSE {e.reply_code} {e.reply_text}"
    if isinstance(e, px.ConnectionClosedByBroker):
        return f"CONNECTION CLOSE {e.reply_code} {e.reply_text}"
    return f"ERR {e!r}"


def show(case, fn):
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001 - report everything
        r = err(e)
    print(f"{case} -> {r}", flush=True)


def with_ch(fn):
    """Run fn(channel) on a fresh connection; close it afterwards."""
    c = conn()
    try:
        return fn(c.channel())
    finally:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass


def declare_ok(m):
    return f"declare-ok queue={m.method.queue} message_count={m.method.message_count} consumer_count={m.method.consumer_count}"


SARGS = {"x-queue-type": "stream"}


def stream(tag, extra=None):
    """Create a durable stream queue (fresh) and return its name."""
    n = qname(tag)
    args = dict(SARGS)
    if extra:
        args.update(extra)
    with_ch(lambda x: x.queue_declare(n, durable=True, arguments=args))
    return n


def publish(q, n, start=0, confirm=True, exchange="", headers=None):
    """Publish n messages b'm<i>' (each confirmed when confirm=True)."""
    def go(x):
        if confirm:
            x.confirm_delivery()
        for i in range(start, start + n):
            x.basic_publish(exchange, q, b"m%d" % i,
                            pika.BasicProperties(headers=headers, delivery_mode=2))
        if not confirm:
            x.queue_declare(q, passive=True)  # round trip
        return n
    with_ch(go)
    time.sleep(SETTLE)


def passive_count(q):
    return with_ch(lambda x: declare_ok(x.queue_declare(q, passive=True)))


def ranges(xs):
    """[0,1,2,5] -> '0..2,5'"""
    if not xs:
        return "-"
    out, a, b = [], xs[0], xs[0]
    for v in xs[1:]:
        if isinstance(v, int) and isinstance(b, int) and v == b + 1:
            b = v
        else:
            out.append(f"{a}" if a == b else f"{a}..{b}")
            a = b = v
    out.append(f"{a}" if a == b else f"{a}..{b}")
    return ",".join(out)


def summarize(got):
    if not got:
        return "0 deliveries"
    offs = [g["off"] for g in got]
    kinds = sorted({g["kind"] for g in got})
    tags = [g["tag"] for g in got]
    red = sorted({g["redelivered"] for g in got})
    bodies = [g["body"] for g in got]
    return (f"{len(got)} deliveries; x-stream-offset={ranges(offs)} (field type {'/'.join(kinds)}); "
            f"delivery_tag={ranges(tags)}; redelivered={red}; bodies={bodies[0]}..{bodies[-1]}; "
            f"exchange={got[0]['exchange']!r} routing_key={got[0]['rk']!r} other headers={got[0]['other']}")


def consume(q, args=None, prefetch=10, qos=True, no_ack=False, ack=True,
            wait=1.0, exclusive=False, global_qos=False, on_setup=None, after=None):
    """Consume for `wait` seconds; returns (deliveries, extra-text)."""
    c = conn()
    x = c.channel()
    got = []
    extra = []
    closed = []
    x._impl.add_on_close_callback(lambda ch, reason: closed.append(f"channel closed: {reason!r}"))
    try:
        if qos:
            x.basic_qos(prefetch_count=prefetch, global_qos=global_qos)

        def cb(chn, m, p, b):
            h = p.headers or {}
            kinds = getattr(h, "kinds", None) or {}
            got.append({"tag": m.delivery_tag, "redelivered": m.redelivered,
                        "off": h.get("x-stream-offset"), "kind": kinds.get("x-stream-offset", "?"),
                        "body": b.decode(errors="replace"), "exchange": m.exchange,
                        "rk": m.routing_key,
                        "other": {k: v for k, v in h.items() if k != "x-stream-offset"}})
            if ack and not no_ack:
                chn.basic_ack(m.delivery_tag)
        ctag = x.basic_consume(q, cb, auto_ack=no_ack, exclusive=exclusive, arguments=args)
        if on_setup:
            extra.append(on_setup(x, ctag))
        deadline = time.time() + wait
        while time.time() < deadline:
            c.process_data_events(time_limit=max(0.01, deadline - time.time()))
        if after:
            try:
                extra.append(after(c, x, got))
            except Exception as e:  # noqa: BLE001
                extra.append(err(e))
        extra.extend(closed)
        return got, extra
    finally:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass


def consume_show(q, **kw):
    got, extra = consume(q, **kw)
    s = summarize(got)
    if extra:
        s += " | " + " | ".join(str(e) for e in extra if e is not None)
    return s


# --- 1. queue.declare -----------------------------------------------------------
def section_declare():
    print("## 1. queue.declare")
    n = qname("nd")
    show("declare stream durable=false",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=False, arguments=SARGS))))
    n = qname("ex")
    show("declare stream durable=true exclusive=true",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, exclusive=True, arguments=SARGS))))
    n = qname("ad")
    show("declare stream durable=true auto_delete=true",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, auto_delete=True, arguments=SARGS))))
    n = qname("ok")
    show("declare stream durable=true",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments=SARGS))))
    show("redeclare same args", lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments=SARGS))))
    show("redeclare passive", lambda: passive_count(n))
    show("redeclare without x-queue-type",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True))))
    show("redeclare x-queue-type=classic",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments={"x-queue-type": "classic"}))))
    show("redeclare x-queue-type=quorum",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments={"x-queue-type": "quorum"}))))
    show("redeclare adding x-max-age=1h",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments={**SARGS, "x-max-age": "1h"}))))
    show("redeclare adding x-max-length-bytes=1000",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments={**SARGS, "x-max-length-bytes": 1000}))))
    show("redeclare adding x-stream-max-segment-size-bytes=1000",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments={**SARGS, "x-stream-max-segment-size-bytes": 1000}))))
    show("redeclare adding x-message-ttl=1000",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments={**SARGS, "x-message-ttl": 1000}))))
    show("redeclare durable=false",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=False, arguments=SARGS))))
    n2 = qname("age")
    with_ch(lambda x: x.queue_declare(n2, durable=True, arguments={**SARGS, "x-max-age": "1h"}))
    show("redeclare x-max-age 1h -> 2h",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n2, durable=True, arguments={**SARGS, "x-max-age": "2h"}))))
    show("redeclare x-max-age 1h -> omitted",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n2, durable=True, arguments=SARGS))))
    show("redeclare x-max-age 1h -> 60m",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(n2, durable=True, arguments={**SARGS, "x-max-age": "60m"}))))
    show("classic queue redeclared as stream", lambda: with_ch(lambda x: (
        x.queue_declare(qname("cl"), durable=True),
        declare_ok(x.queue_declare(qname("cl"), durable=True, arguments=SARGS)))[1]))
    def server_named(x):
        r = x.queue_declare("", durable=True, arguments=SARGS)
        CREATED.add(r.method.queue)
        return declare_ok(r)
    show("server-named stream (empty name)", lambda: with_ch(server_named))
    show("x-queue-type=foo",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(qname("foo"), durable=True, arguments={"x-queue-type": "foo"}))))
    show("x-queue-type=Stream (case)",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(qname("case"), durable=True, arguments={"x-queue-type": "Stream"}))))
    show("x-queue-type as longstr bytes",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(qname("bytes"), durable=True, arguments={"x-queue-type": b"stream"}))))

    cases = [
        ("x-max-length-bytes", 1000000), ("x-max-length-bytes", 0), ("x-max-length-bytes", -1),
        ("x-max-length-bytes", "100"), ("x-max-length-bytes", pika.compat.long(20000000000)),
        ("x-max-age", "7D"), ("x-max-age", "12h"), ("x-max-age", "30m"), ("x-max-age", "10s"),
        ("x-max-age", "1Y"), ("x-max-age", "1M"), ("x-max-age", "1X"), ("x-max-age", "0s"),
        ("x-max-age", "-1h"), ("x-max-age", "10"), ("x-max-age", "h"), ("x-max-age", 10),
        ("x-max-age", "1d"), ("x-max-age", "1H"), ("x-max-age", "1.5h"),
        ("x-stream-max-segment-size-bytes", 500000), ("x-stream-max-segment-size-bytes", 0),
        ("x-stream-max-segment-size-bytes", -5), ("x-stream-max-segment-size-bytes", "big"),
        ("x-stream-max-segment-size-bytes", pika.compat.long(4000000000)),
        ("x-initial-cluster-size", 1), ("x-initial-cluster-size", 0), ("x-queue-leader-locator", "balanced"),
        ("x-queue-leader-locator", "foo"), ("x-max-length", 10), ("x-message-ttl", 1000),
        ("x-dead-letter-exchange", "dlx"), ("x-dead-letter-routing-key", "rk"), ("x-max-priority", 5),
        ("x-overflow", "reject-publish"), ("x-overflow", "drop-head"), ("x-expires", 10000),
        ("x-single-active-consumer", True), ("x-single-active-consumer", False),
        ("x-queue-mode", "lazy"), ("x-quorum-initial-group-size", 1), ("x-delivery-limit", 5),
        ("x-queue-master-locator", "min-masters"), ("x-stream-filter-size-bytes", 32),
        ("x-unknown-arg", "v"),
    ]
    for i, (k, v) in enumerate(cases):
        n = qname(f"arg{i}")
        show(f"declare stream {k}={v!r}",
             lambda: with_ch(lambda x: declare_ok(x.queue_declare(n, durable=True, arguments={**SARGS, k: v}))))
    # all of them at once: which one is reported first?
    n = qname("multi")
    show("declare stream x-max-length=10 + x-message-ttl=1 + x-max-priority=5 (which reported)",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(
             n, durable=True, arguments={**SARGS, "x-max-length": 10, "x-message-ttl": 1, "x-max-priority": 5}))))


# --- 2. basic.consume -------------------------------------------------------------
def section_consume():
    print("## 2. basic.consume")
    q = stream("c")
    publish(q, 10)
    show("passive declare after 10 confirmed publishes", lambda: passive_count(q))
    show("consume without basic.qos (prefetch 0)", lambda: consume_show(q, qos=False))
    show("consume with basic.qos prefetch 0 explicitly", lambda: consume_show(q, prefetch=0))
    show("consume no_ack=true (qos 10)", lambda: consume_show(q, no_ack=True, args={"x-stream-offset": "first"}))
    show("consume no_ack=true without qos", lambda: consume_show(q, no_ack=True, qos=False))
    show("consume qos global=true prefetch 10", lambda: consume_show(q, global_qos=True, args={"x-stream-offset": "first"}))
    show("consume qos 10 manual ack, no x-stream-offset (default)", lambda: consume_show(q))
    show("consume qos 10 exclusive=true, first", lambda: consume_show(q, exclusive=True, args={"x-stream-offset": "first"}))

    def two_consumers(first_exclusive=True):
        c = conn()
        x = c.channel()
        x.basic_qos(prefetch_count=10)
        x.basic_consume(q, lambda *a: None, exclusive=first_exclusive)
        try:
            c2 = conn()
            y = c2.channel()
            y.basic_qos(prefetch_count=10)
            y.basic_consume(q, lambda *a: None, exclusive=not first_exclusive)
            return "second consumer accepted"
        finally:
            c.close()
    show("second consumer (other connection) while an exclusive consumer exists", two_consumers)
    show("exclusive consumer while another consumer exists", lambda: two_consumers(False))

    def consumer_count():
        c = conn()
        x = c.channel()
        x.basic_qos(prefetch_count=10)
        acker = lambda chn, m, p, b: chn.basic_ack(m.delivery_tag)  # noqa: E731
        x.basic_consume(q, acker)
        x.basic_consume(q, acker, arguments={"x-stream-offset": "first"})
        c.process_data_events(time_limit=1.5)
        r = passive_count(q)
        c.process_data_events(time_limit=0.3)
        c.close()
        return r
    show("passive declare while 2 consumers attached", consumer_count)

    offsets = [
        ("first", "first"), ("last", "last"), ("next", "next"), ("int 0", 0), ("int 5", 5),
        ("int 9", 9), ("int 10 (=next)", 10), ("int 1000 (past end)", 1000),
        ("long 5 (type l)", pika.compat.long(5)), ("negative -1", -1),
        ("string '5'", "5"), ("interval 1h", "1h"), ("interval 10s", "10s"), ("interval 1D", "1D"),
        ("invalid 'foo'", "foo"), ("bool true", True), ("float (decimal) 1.5", __import__("decimal").Decimal("1.5")),
        ("timestamp epoch 0", datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)),
        ("timestamp now-1h", datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)),
        ("timestamp now+1h", datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)),
        ("table", {"a": 1}),
    ]
    for label, v in offsets:
        show(f"consume x-stream-offset {label}", lambda: consume_show(q, args={"x-stream-offset": v}))

    # timestamp between two batches
    q2 = stream("ts")
    publish(q2, 5)
    time.sleep(2.1)
    mid = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(1.1)
    publish(q2, 5, start=5)
    show("consume timestamp between batch 0..4 and batch 5..9 (2 s apart)",
         lambda: consume_show(q2, args={"x-stream-offset": mid}))
    show("consume interval '2s' (batch 5..9 published ~0.5 s ago, 0..4 ~3.5 s ago)",
         lambda: consume_show(q2, args={"x-stream-offset": "2s"}))

    # 'next' / default consumer then receives new messages
    def live_next():
        def after(c, x, got):
            publish(q, 3, start=100)
            deadline = time.time() + 1
            while time.time() < deadline:
                c.process_data_events(time_limit=0.1)
            return "after 3 more publishes: " + summarize(got)
        got, extra = consume(q, args={"x-stream-offset": "next"}, wait=0.3, after=after)
        return extra[0]
    show("consume 'next' then publish 3", live_next)

    def past_end():
        def after(c, x, got):
            publish(q, 3, start=200)
            deadline = time.time() + 1
            while time.time() < deadline:
                c.process_data_events(time_limit=0.1)
            return "after 3 more publishes: " + summarize(got)
        got, extra = consume(q, args={"x-stream-offset": 1000}, wait=0.3, after=after)
        return extra[0]
    show("consume offset 1000 (past end) then publish 3", past_end)

    # chunk semantics of 'last'
    q3 = stream("last-sep")
    publish(q3, 10)  # each publish confirmed before the next: separate chunks
    show("'last' on 10 messages published one by one (each confirmed)",
         lambda: consume_show(q3, args={"x-stream-offset": "last"}))
    q4 = stream("last-burst")
    publish(q4, 10, confirm=False)  # burst: likely one chunk
    show("'last' on 10 messages published in one burst (no confirms)",
         lambda: consume_show(q4, args={"x-stream-offset": "last"}))
    show("int 5 on the burst stream (is the chunk start delivered?)",
         lambda: consume_show(q4, args={"x-stream-offset": 5}))
    q5 = stream("last-mix")
    publish(q5, 10)
    publish(q5, 10, start=10, confirm=False)
    show("'last' on 10 confirmed + 10 burst", lambda: consume_show(q5, args={"x-stream-offset": "last"}))
    show("timestamp on burst stream: now+0 (chunk timestamps)",
         lambda: consume_show(q4, args={"x-stream-offset": datetime.datetime.now(datetime.timezone.utc)}))
    # headers and properties carried
    q6 = stream("hdr")
    with_ch(lambda x: (x.confirm_delivery(), x.basic_publish(
        "", q6, b"h", pika.BasicProperties(headers={"a": 1, "b": "x"}, content_type="text/plain",
                                           delivery_mode=2, message_id="id1", priority=3, expiration="60000"))))
    time.sleep(SETTLE)

    def props():
        c = conn()
        x = c.channel()
        x.basic_qos(prefetch_count=1)
        for m, p, b in x.consume(q6, arguments={"x-stream-offset": "first"}, inactivity_timeout=1):
            if m is None:
                c.close()
                return "no delivery"
            c.close()
            return (f"headers={dict(p.headers)} kinds={p.headers.kinds} content_type={p.content_type} "
                    f"message_id={p.message_id} priority={p.priority} expiration={p.expiration} "
                    f"delivery_mode={p.delivery_mode}")
    show("properties of a delivery (published with headers a=1,b=x, expiration 60000, delivery_mode 2)", props)
    show("published with expiration=1 (ms) then read after 0.5 s",
         lambda: (with_ch(lambda x: (x.confirm_delivery(), x.basic_publish(
             "", q6, b"exp", pika.BasicProperties(expiration="1"))))
             , time.sleep(0.5), consume_show(q6, args={"x-stream-offset": "first"}))[2])


# --- 3. get / purge / nack / reject / recover --------------------------------
def section_ops():
    print("## 3. basic.get / purge / nack / reject / ack multiple / recover")
    q = stream("ops")
    publish(q, 10)
    show("basic.get", lambda: with_ch(lambda x: repr(x.basic_get(q))))
    show("basic.get no_ack", lambda: with_ch(lambda x: repr(x.basic_get(q, auto_ack=True))))
    show("queue.purge", lambda: with_ch(lambda x: f"purge-ok message_count={x.queue_purge(q).method.message_count}"))

    def settle_case(action, requeue=None, multiple=False):
        def on(c, x, got):
            tags = [g["tag"] for g in got]
            if not tags:
                return "no deliveries to settle"
            t = tags[0]
            if action == "nack":
                x.basic_nack(t, multiple=multiple, requeue=requeue)
            elif action == "reject":
                x.basic_reject(t, requeue=requeue)
            elif action == "ack-multiple":
                x.basic_ack(tags[2], multiple=True)
            elif action in ("ack-unknown", "ack-twice"):
                if action == "ack-unknown":
                    x.basic_ack(999)
                else:
                    x.basic_ack(t)
                    x.basic_ack(t)
                deadline = time.time() + 0.5
                while time.time() < deadline and x.is_open:
                    c.process_data_events(time_limit=0.1)
                reason = getattr(x, "_closing_reason", None)
                return f"channel closed: {err(reason)}" if x.is_closed else "channel open"
            elif action == "recover":
                x.basic_recover(requeue=True)
            elif action == "recover-norequeue":
                x.basic_recover(requeue=False)
            n0 = len(got)
            deadline = time.time() + 1.0
            while time.time() < deadline:
                c.process_data_events(time_limit=0.1)
            later = got[n0:]
            x.basic_qos(prefetch_count=10)  # round trip: is the channel still open?
            return f"channel open; after settle {len(later)} more deliveries: {summarize(later)}"
        got, extra = consume(q, args={"x-stream-offset": "first"}, prefetch=3, ack=False, wait=0.5,
                             after=on)
        return f"initially {len([g for g in got])} (incl. later) | {extra[0]}"
    for label, a, rq, mult in [("basic.nack requeue=true (first of 3 unacked, prefetch 3)", "nack", True, False),
                               ("basic.nack requeue=false", "nack", False, False),
                               ("basic.nack multiple=true requeue=true", "nack", True, True),
                               ("basic.reject requeue=true", "reject", True, False),
                               ("basic.reject requeue=false", "reject", False, False),
                               ("basic.ack multiple=true on tag 3 of 3", "ack-multiple", None, False),
                               ("basic.ack unknown tag 999", "ack-unknown", None, False),
                               ("basic.ack same tag twice", "ack-twice", None, False),
                               ("basic.recover requeue=true", "recover", None, False),
                               ("basic.recover requeue=false", "recover-norequeue", None, False)]:
        show(label, lambda: settle_case(a, rq, mult))
    show("passive declare after consuming/acking (10 published)", lambda: passive_count(q))
    q2 = stream("cnt")
    show("passive declare on empty stream", lambda: passive_count(q2))
    publish(q2, 1)
    show("passive declare after 1 publish", lambda: passive_count(q2))
    publish(q2, 4, start=1)
    show("passive declare after 5 publishes", lambda: passive_count(q2))
    publish(q2, 5, start=5, confirm=False)
    show("passive declare after 5 + 5 burst publishes", lambda: passive_count(q2))
    q3 = stream("cnt-t")
    publish(q3, 10)
    t0 = time.time()
    for wait in (0, 1, 3, 6):
        time.sleep(max(0, t0 + wait - time.time()))
        show(f"passive declare {wait} s after 10 confirmed publishes", lambda: passive_count(q3))
    show("non-passive redeclare message_count (same args)",
         lambda: with_ch(lambda x: declare_ok(x.queue_declare(q2, durable=True, arguments=SARGS))))

    def cancel():
        c = conn()
        x = c.channel()
        x.basic_qos(prefetch_count=10)
        t = x.basic_consume(q2, lambda chn, m, p, b: chn.basic_ack(m.delivery_tag),
                            arguments={"x-stream-offset": "first"})
        c.process_data_events(time_limit=1.5)
        r0 = passive_count(q2)
        x.basic_cancel(t)
        r = passive_count(q2)
        c.close()
        return f"with consumer: {r0}; after cancel-ok: {r}"
    show("basic.cancel of a stream consumer", cancel)


# --- 4. confirms / filters ----------------------------------------------------------
def section_publish():
    print("## 4. publishing: confirms, mandatory, filters")
    q = stream("pub")

    def confirms():
        c = conn()
        x = c.channel()
        acks = []
        x.confirm_delivery()
        for i in range(3):
            x.basic_publish("", q, b"c%d" % i)
            acks.append("ack")
        c.close()
        return f"3 publishes confirmed ({acks})"
    show("publish with confirms", confirms)
    show("publish mandatory=true with confirms (routable)",
         lambda: with_ch(lambda x: (x.confirm_delivery(), x.basic_publish("", q, b"m", mandatory=True), "confirmed, not returned")[2]))
    show("publish with x-stream-filter-value header",
         lambda: with_ch(lambda x: (x.confirm_delivery(), [x.basic_publish("", q, b"f-%s" % v.encode(), pika.BasicProperties(headers={"x-stream-filter-value": v})) for v in ["red", "blue", "red"]], "confirmed")[2]))
    time.sleep(SETTLE)
    show("consume x-stream-filter=red, first",
         lambda: consume_show(q, args={"x-stream-offset": "first", "x-stream-filter": "red"}))
    show("consume x-stream-filter=[red], x-stream-match-unfiltered=true",
         lambda: consume_show(q, args={"x-stream-offset": "first", "x-stream-filter": ["red"], "x-stream-match-unfiltered": True}))
    show("consume x-stream-filter=5 (wrong type)",
         lambda: consume_show(q, args={"x-stream-offset": "first", "x-stream-filter": 5}))
    show("consume x-priority=5 + x-cancel-on-ha-failover",
         lambda: consume_show(q, args={"x-stream-offset": "first", "x-priority": 5, "x-cancel-on-ha-failover": True}))
    big = stream("big")
    show("publish 1 MiB body", lambda: with_ch(lambda x: (x.confirm_delivery(), x.basic_publish("", big, b"x" * (1 << 20)), "confirmed")[2]))


# --- 5. delete / bind ------------------------------------------------------------
def section_delete_bind():
    print("## 5. queue.delete / bindings")
    q = stream("del")
    publish(q, 4)
    show("queue.delete stream with 4 messages",
         lambda: with_ch(lambda x: f"delete-ok message_count={x.queue_delete(q).method.message_count}"))
    show("passive declare after delete", lambda: passive_count(q))
    q = stream("del2")
    publish(q, 2)
    show("queue.delete if_empty=true (2 messages)",
         lambda: with_ch(lambda x: f"delete-ok message_count={x.queue_delete(q, if_empty=True).method.message_count}"))

    def del_unused():
        q = stream("del3")
        c = conn()
        x = c.channel()
        x.basic_qos(prefetch_count=10)
        x.basic_consume(q, lambda *a: None)
        try:
            return with_ch(lambda y: f"delete-ok message_count={y.queue_delete(q, if_unused=True).method.message_count}")
        finally:
            c.close()
    show("queue.delete if_unused=true with a consumer", del_unused)

    def del_with_consumer():
        q = stream("del4")
        c = conn()
        x = c.channel()
        x.basic_qos(prefetch_count=10)
        cancelled = []
        x.add_on_cancel_callback(lambda m: cancelled.append(m.method.consumer_tag))
        x.basic_consume(q, lambda *a: None)
        r = with_ch(lambda y: f"delete-ok message_count={y.queue_delete(q).method.message_count}")
        deadline = time.time() + 1
        while time.time() < deadline:
            c.process_data_events(time_limit=0.1)
        r += f"; consumer got basic.cancel: {bool(cancelled)}; channel open: {x.is_open}"
        c.close()
        return r
    show("queue.delete with a consumer attached", del_with_consumer)

    q = stream("bind")
    ex = f"ps-x-{SUFFIX}"

    def bind():
        def go(x):
            x.exchange_declare(ex, "direct", auto_delete=False)
            x.queue_bind(q, ex, routing_key="k")
            x.queue_bind(q, "amq.fanout")
            x.confirm_delivery()
            x.basic_publish(ex, "k", b"via-direct")
            x.basic_publish("amq.fanout", "any", b"via-fanout")
            return "bind-ok x2, published via both"
        return with_ch(go)
    show("bind stream to direct exchange and amq.fanout, publish", bind)
    time.sleep(SETTLE)
    show("consume first after exchange publishes", lambda: consume_show(q, args={"x-stream-offset": "first"}))
    show("queue.unbind", lambda: with_ch(lambda x: (x.queue_unbind(q, ex, routing_key="k"), x.queue_unbind(q, "amq.fanout"), "unbind-ok")[2]))
    with_ch(lambda x: x.exchange_delete(ex))


# --- 6. flow control / credit -------------------------------------------------------
def section_credit():
    print("## 6. prefetch as credit")
    q = stream("credit")
    publish(q, 30)
    qb = stream("credit-burst")
    publish(qb, 30, confirm=False)
    show("prefetch 5, first, 30 msgs (confirmed one by one), never ack",
         lambda: consume_show(q, prefetch=5, ack=False, args={"x-stream-offset": "first"}, wait=1.5))
    show("prefetch 5, first, 30 msgs (one burst), never ack",
         lambda: consume_show(qb, prefetch=5, ack=False, args={"x-stream-offset": "first"}, wait=1.5))
    show("prefetch 5, first, 30 msgs, ack each",
         lambda: consume_show(q, prefetch=5, ack=True, args={"x-stream-offset": "first"}, wait=1.5))
    show("prefetch 5, first, 30 msgs (burst), ack each",
         lambda: consume_show(qb, prefetch=5, ack=True, args={"x-stream-offset": "first"}, wait=1.5))

    def stepwise(qq):
        def after(c, x, got):
            steps = [len(got)]
            if got:
                x.basic_ack(got[-1]["tag"], multiple=True)
            deadline = time.time() + 0.7
            while time.time() < deadline:
                c.process_data_events(time_limit=0.1)
            steps.append(len(got))
            if got:
                x.basic_ack(got[0]["tag"])  # ack one (already acked via multiple? no: first batch acked)
            return f"received before ack={steps[0]}, after acking all of them (multiple)={steps[1]}"
        got, extra = consume(qq, prefetch=5, ack=False, args={"x-stream-offset": "first"}, wait=0.7, after=after)
        return extra[0]
    show("prefetch 5, no ack, then ack multiple (confirmed stream)", lambda: stepwise(q))
    show("prefetch 5, no ack, then ack multiple (burst stream)", lambda: stepwise(qb))

    def one_ack():
        def after(c, x, got):
            n0 = len(got)
            x.basic_ack(got[0]["tag"])
            deadline = time.time() + 0.7
            while time.time() < deadline:
                c.process_data_events(time_limit=0.1)
            return f"received before ack={n0}, after acking 1 message={len(got)}"
        got, extra = consume(q, prefetch=5, ack=False, args={"x-stream-offset": "first"}, wait=0.7, after=after)
        return extra[0]
    show("prefetch 5, ack one", one_ack)

    def qos_change():
        def after(c, x, got):
            n0 = len(got)
            x.basic_qos(prefetch_count=20)
            deadline = time.time() + 0.7
            while time.time() < deadline:
                c.process_data_events(time_limit=0.1)
            return f"received with prefetch 5={n0}, after basic.qos 20 (no acks)={len(got)}"
        got, extra = consume(q, prefetch=5, ack=False, args={"x-stream-offset": "first"}, wait=0.7, after=after)
        return extra[0]
    show("prefetch 5 then basic.qos 20 without acking", qos_change)
    show("prefetch 1, ack each, 30 msgs",
         lambda: consume_show(q, prefetch=1, ack=True, args={"x-stream-offset": "first"}, wait=1.5))


def cleanup():
    left = set(CREATED)
    while left:
        c = conn()
        x = c.channel()
        for n in sorted(left):
            try:
                x.queue_delete(n)
                left.discard(n)
            except px.ChannelClosedByBroker:
                left.discard(n)
                break
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    try:
        section_declare()
        section_consume()
        section_ops()
        section_publish()
        section_delete_bind()
        section_credit()
    finally:
        cleanup()
