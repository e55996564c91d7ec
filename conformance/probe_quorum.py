#!/usr/bin/env python3
"""Probe of quorum queues (x-queue-type: quorum) over AMQP 0-9-1 (pika).

Usage: python3 conformance/probe_quorum.py [amqp-url]
       (default amqp://guest:guest@127.0.0.1:5672/%2F)

Prints one line per case: `case -> result`, where result is a reply code and
text (CHANNEL CLOSE / CONNECTION CLOSE) or what happened. Every case uses a
fresh connection; queue names carry a random suffix and every queue the
script creates is deleted at the end. Run it against RabbitMQ and against
warren and diff the outputs; RABBITMQ_BEHAVIOUR.md records the RabbitMQ
3.10.8 results.
"""
import sys
import time
import uuid

import pika
import pika.exceptions as px

URL = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2F"
SUFFIX = uuid.uuid4().hex[:8]
CREATED = set()
QQ = {"x-queue-type": "quorum"}


def qname(tag):
    n = f"pq-{tag}-{SUFFIX}"
    CREATED.add(n)
    return n


def conn():
    return pika.BlockingConnection(pika.URLParameters(URL))


def closed(e):
    if isinstance(e, px.ChannelClosedByBroker):
        return f"CHANNEL CLOSE {e.reply_code} {e.reply_text}"
    if isinstance(e, px.ConnectionClosedByBroker):
        return f"CONNECTION CLOSE {e.reply_code} {e.reply_text}"
    return f"{type(e).__name__}: {e}"


def case(name, f):
    c = conn()
    try:
        r = f(c.channel())
        print(f"{name} -> {r}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"{name} -> {closed(e)}", flush=True)
    finally:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass


def declare(tag, durable=True, exclusive=False, auto_delete=False, **args):
    def f(ch):
        q = qname(tag) if tag else ""
        r = ch.queue_declare(q, durable=durable, exclusive=exclusive,
                             auto_delete=auto_delete, arguments={**QQ, **args})
        return f"declare-ok {r.method.queue if tag else 'server-named'} messages={r.method.message_count}"
    return f


def get_all(ch, q, ack=True):
    out = []
    while True:
        m, p, b = ch.basic_get(q, auto_ack=False)
        if m is None:
            return out
        out.append((m, p, b))
        if ack:
            ch.basic_ack(m.delivery_tag)


def delivery_limit(ch):
    q = qname("dl")
    dlx = qname("dlx-target")
    ch.queue_declare(dlx, durable=True)
    ch.queue_declare(q, durable=True, arguments={
        **QQ, "x-delivery-limit": 2,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlx})
    ch.basic_publish("", q, b"x", pika.BasicProperties(headers={"h": 1}))
    time.sleep(0.2)
    seen = []
    for _ in range(5):
        m, p, b = ch.basic_get(q, auto_ack=False)
        if m is None:
            seen.append("empty")
            break
        seen.append(f"redelivered={m.redelivered} x-delivery-count={(p.headers or {}).get('x-delivery-count')}")
        ch.basic_nack(m.delivery_tag, requeue=True)
        time.sleep(0.1)
    time.sleep(0.3)
    m, p, b = ch.basic_get(dlx, auto_ack=True)
    if m is None:
        dl = "dead-letter queue empty"
    else:
        death = (p.headers or {}).get("x-death", [{}])[0]
        dl = (f"dead-lettered reason={death.get('reason')} count={death.get('count')} "
              f"queue={'q' if death.get('queue') == q else death.get('queue')} "
              f"x-delivery-count={(p.headers or {}).get('x-delivery-count')} "
              f"x-first-death-reason={(p.headers or {}).get('x-first-death-reason')}")
    return "; ".join(seen) + " | " + dl


def delivery_limit_reject_and_close(ch):
    q = qname("dl2")
    ch.queue_declare(q, durable=True, arguments={**QQ, "x-delivery-limit": 1})
    ch.basic_publish("", q, b"x")
    time.sleep(0.2)
    m, p, b = ch.basic_get(q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=True)
    time.sleep(0.1)
    m, p, b = ch.basic_get(q, auto_ack=False)
    first = f"after reject: x-delivery-count={(p.headers or {}).get('x-delivery-count')}"
    ch.close()
    c2 = conn()
    ch2 = c2.channel()
    time.sleep(0.2)
    m, p, b = ch2.basic_get(q, auto_ack=True)
    second = "after channel close: " + ("empty (dropped)" if m is None else
                                        f"x-delivery-count={(p.headers or {}).get('x-delivery-count')}")
    c2.close()
    return first + "; " + second


def overflow(kind):
    def f(ch):
        q = qname("ov-" + kind)
        ch.queue_declare(q, durable=True, arguments={**QQ, "x-max-length": 2, "x-overflow": kind})
        ch.confirm_delivery()
        res = []
        for i in range(3):
            try:
                ch.basic_publish("", q, b"m%d" % i)
                res.append("ack")
            except px.NackError:
                res.append("nack")
        got = [b.decode() for _, _, b in get_all(ch, q)]
        return f"confirms={res} kept={got}"
    return f


def global_qos_consume(ch):
    q = qname("gq")
    ch.queue_declare(q, durable=True, arguments=QQ)
    ch.basic_qos(prefetch_count=5, global_qos=True)
    ch.basic_consume(q, lambda *a: None)
    ch.connection.process_data_events(0.3)
    return "consume-ok"


def priority_ignored(ch):
    q = qname("prio")
    ch.queue_declare(q, durable=True, arguments=QQ)
    for p in (1, 9, 5):
        ch.basic_publish("", q, b"p%d" % p, pika.BasicProperties(priority=p))
    time.sleep(0.2)
    return "order=" + ",".join(b.decode() for _, _, b in get_all(ch, q))


def redeclare_classic(ch):
    q = qname("redecl")
    ch.queue_declare(q, durable=True, arguments=QQ)
    ch.queue_declare(q, durable=True)
    return "declare-ok"


def redeclare_other_limit(ch):
    q = qname("redecl2")
    ch.queue_declare(q, durable=True, arguments={**QQ, "x-delivery-limit": 3})
    ch.queue_declare(q, durable=True, arguments={**QQ, "x-delivery-limit": 4})
    return "declare-ok"


def ttl(ch):
    q = qname("ttl")
    ch.queue_declare(q, durable=True, arguments={**QQ, "x-message-ttl": 200})
    ch.basic_publish("", q, b"t")
    time.sleep(0.6)
    m, _, _ = ch.basic_get(q, auto_ack=True)
    return "expired" if m is None else "still there"


def purge_and_delete(ch):
    q = qname("purge")
    ch.queue_declare(q, durable=True, arguments=QQ)
    for _ in range(3):
        ch.basic_publish("", q, b"p")
    time.sleep(0.2)
    r = ch.queue_purge(q)
    d = ch.queue_delete(q)
    return f"purge-ok {r.method.message_count}; delete-ok {d.method.message_count}"


def nack_requeue_position(ch):
    q = qname("requeue")
    ch.queue_declare(q, durable=True, arguments=QQ)
    for i in range(3):
        ch.basic_publish("", q, b"r%d" % i)
    time.sleep(0.2)
    m, _, _ = ch.basic_get(q, auto_ack=False)
    ch.basic_nack(m.delivery_tag, requeue=True)
    time.sleep(0.1)
    return "order after requeue of r0=" + ",".join(b.decode() for _, _, b in get_all(ch, q))


CASES = [
    ("declare durable", declare("ok")),
    ("declare non-durable", declare("nd", durable=False)),
    ("declare exclusive", declare("ex", exclusive=True)),
    ("declare auto-delete", declare("ad", auto_delete=True)),
    ("declare server-named", declare("")),
    ("x-max-priority", declare("a1", **{"x-max-priority": 5})),
    ("x-queue-mode lazy", declare("a2", **{"x-queue-mode": "lazy"})),
    ("x-queue-master-locator", declare("a3", **{"x-queue-master-locator": "min-masters"})),
    ("x-overflow reject-publish-dlx", declare("a4", **{"x-overflow": "reject-publish-dlx"})),
    ("x-overflow drop-head", declare("a5", **{"x-overflow": "drop-head"})),
    ("x-overflow reject-publish", declare("a6", **{"x-overflow": "reject-publish"})),
    ("x-expires", declare("a7", **{"x-expires": 60000})),
    ("x-message-ttl", declare("a8", **{"x-message-ttl": 60000})),
    ("x-max-length", declare("a9", **{"x-max-length": 10})),
    ("x-max-length-bytes", declare("a10", **{"x-max-length-bytes": 1000})),
    ("x-delivery-limit", declare("a11", **{"x-delivery-limit": 3})),
    ("x-delivery-limit -1", declare("a11b", **{"x-delivery-limit": -1})),
    ("x-delivery-limit string", declare("a11c", **{"x-delivery-limit": "3"})),
    ("x-dead-letter-strategy at-least-once", declare("a12", **{"x-dead-letter-strategy": "at-least-once"})),
    ("x-dead-letter-strategy bogus", declare("a13", **{"x-dead-letter-strategy": "bogus"})),
    ("x-quorum-initial-group-size 3", declare("a14", **{"x-quorum-initial-group-size": 3})),
    ("x-quorum-initial-group-size 0", declare("a14b", **{"x-quorum-initial-group-size": 0})),
    ("x-single-active-consumer", declare("a15", **{"x-single-active-consumer": True})),
    ("x-max-age (stream arg)", declare("a16", **{"x-max-age": "1D"})),
    ("x-stream-max-segment-size-bytes", declare("a17", **{"x-stream-max-segment-size-bytes": 1000})),
    ("delivery limit 2 with nack requeue and DLX", delivery_limit),
    ("delivery limit 1 with reject and channel close", delivery_limit_reject_and_close),
    ("x-overflow drop-head, max-length 2, 3 confirmed publishes", overflow("drop-head")),
    ("x-overflow reject-publish, max-length 2, 3 confirmed publishes", overflow("reject-publish")),
    ("global qos then consume", global_qos_consume),
    ("priorities", priority_ignored),
    ("redeclare as classic", redeclare_classic),
    ("redeclare with another x-delivery-limit", redeclare_other_limit),
    ("x-message-ttl 200 ms", ttl),
    ("purge and delete", purge_and_delete),
    ("nack requeue position", nack_requeue_position),
]


def main():
    for name, f in CASES:
        case(name, f)
    c = conn()
    ch = c.channel()
    for q in sorted(CREATED):
        try:
            ch.queue_delete(q)
        except Exception:  # noqa: BLE001
            ch = c.channel()
    c.close()


if __name__ == "__main__":
    main()
