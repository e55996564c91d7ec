#!/usr/bin/env python3
"""Probe of at-least-once dead-lettering from quorum queues (pika).

Usage: python3 conformance/probe_alo_dlx.py [amqp-port] [http-port]
       (default 5672 15672, guest/guest on 127.0.0.1)

A quorum queue with x-dead-letter-strategy at-least-once and x-overflow
reject-publish, and one without reject-publish, each get three messages
rejected while their dead-letter exchange routes nowhere; then a queue is
bound to it. Prints one line per observation. RabbitMQ 3.10.8 retries its
held messages on a timer of minutes, so this waits up to 240 s.
RABBITMQ_BEHAVIOUR.md records the RabbitMQ 3.10.8 results.
"""
import base64
import json
import sys
import time
import urllib.request

import pika

AMQP = int(sys.argv[1]) if len(sys.argv) > 1 else 5672
HTTP = int(sys.argv[2]) if len(sys.argv) > 2 else 15672


def api(path):
    auth = base64.b64encode(b"guest:guest").decode()
    r = urllib.request.Request(f"http://127.0.0.1:{HTTP}{path}", headers={"Authorization": "Basic " + auth})
    return json.load(urllib.request.urlopen(r))


def listing(q, keys):
    # RabbitMQ's figures come from stats emitted every few seconds.
    deadline = time.time() + 15
    while True:
        a = api("/api/queues/%2F/" + q)
        if a.get("messages") is not None or time.time() > deadline:
            return {k: a.get(k) for k in keys}
        time.sleep(1)


c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", AMQP))
ch = c.channel()
ch.confirm_delivery()
for q in ["pa.alo", "pa.amo", "pa.dlq"]:
    ch.queue_delete(q)
ch.exchange_delete("pa.dlx")
ch.exchange_declare("pa.dlx", "fanout")
base = {"x-queue-type": "quorum", "x-dead-letter-exchange": "pa.dlx", "x-dead-letter-strategy": "at-least-once"}
ch.queue_declare("pa.alo", durable=True, arguments={**base, "x-overflow": "reject-publish"})
ch.queue_declare("pa.amo", durable=True, arguments=base)
for q in ["pa.alo", "pa.amo"]:
    for i in range(3):
        ch.basic_publish("", q, f"{q}-{i}".encode())
    for i in range(3):
        m, p, b = ch.basic_get(q)
        ch.basic_reject(m.delivery_tag, requeue=False)
time.sleep(6)
for q in ["pa.alo", "pa.amo"]:
    n = ch.queue_declare(q, passive=True).method.message_count
    print(f"{q} rejected with no route -> declare-ok message_count={n}",
          listing(q, ["messages", "messages_ready", "messages_dlx", "message_bytes_dlx"]))
ch.queue_declare("pa.dlq", durable=True)
ch.queue_bind("pa.dlq", "pa.dlx")
t0 = time.time()
n = 0
while time.time() - t0 < 240:
    n = ch.queue_declare("pa.dlq", passive=True).method.message_count
    if n >= 3:
        break
    time.sleep(1)
print(f"queue bound to the DLX -> it got {n} (within 240 s)")
bodies = []
for _ in range(n):
    m, p, b = ch.basic_get("pa.dlq", auto_ack=True)
    bodies.append((b.decode(), (p.headers or {}).get("x-first-death-reason")))
print("dead-lettered ->", sorted(bodies))
time.sleep(6)
print("pa.alo afterwards ->", listing("pa.alo", ["messages", "messages_dlx"]))
for q in ["pa.alo", "pa.amo", "pa.dlq"]:
    ch.queue_delete(q)
ch.exchange_delete("pa.dlx")
c.close()
