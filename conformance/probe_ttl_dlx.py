#!/usr/bin/env python3
"""Probe of RabbitMQ's TTL, length-limit and dead-lettering behaviour (pika).

Run against RabbitMQ and against warren (python3 probe_ttl_dlx.py HOST PORT) and
diff the outputs (times differ); RABBITMQ_BEHAVIOUR.md records the results.
"""
import pika, time, sys, json
host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 5672
P = pika.ConnectionParameters(host=host, port=port)
def conn():
    return pika.BlockingConnection(P)
c = conn()
def ch():
    global c
    if c.is_closed: c = conn()
    return c.channel()
def show(label, f):
    try:
        r = f()
        print(label, "->", r)
    except Exception as e:
        print(label, "-> ERR", repr(e))
def declare(name, args, passive=False):
    x = ch()
    r = x.queue_declare(name, arguments=args, passive=passive)
    return r.method.message_count
for i,(k,v) in enumerate([("x-expires",0),("x-expires",-1),("x-expires","a"),("x-max-length",-1),("x-max-length","a"),
        ("x-max-length-bytes",-2),("x-overflow","foo"),("x-overflow",1),("x-dead-letter-exchange",5),("x-dead-letter-routing-key","rk"),
        ("x-message-ttl","x"),("x-message-ttl",1.5),("x-max-priority",300),("x-queue-mode","foo"), ("x-message-ttl", 5000000000)]):
    show(f"invalid {k}={v!r}", lambda: declare(f"pq-inv-{i}", {k:v}))
x = ch()
for n in ["pq-ttl","pq-src","pq-dead","pq-ml","pq-rp","pq-exp","pq-cyc1"]:
    x.queue_delete(n)
x.exchange_delete("pdlx")
# queue ttl
x.queue_declare("pq-ttl", arguments={"x-message-ttl":100})
for i in range(3): x.basic_publish("", "pq-ttl", b"m%d"%i)
time.sleep(0.4)
show("ttl count after 400ms", lambda: declare("pq-ttl", None, True))
# per message expiration
x.queue_declare("pq-dead")
x.basic_publish("", "pq-dead", b"e", pika.BasicProperties(expiration="100"))
time.sleep(0.3)
show("msg expiration count", lambda: declare("pq-dead", None, True))
show("bad expiration", lambda: ch().basic_publish("", "pq-dead", b"e", pika.BasicProperties(expiration="abc")) or declare("pq-dead", None, True))
show("neg expiration", lambda: ch().basic_publish("", "pq-dead", b"e", pika.BasicProperties(expiration="-5")) or declare("pq-dead", None, True))
x = ch()
x.exchange_declare("pdlx", "fanout")
x.queue_bind("pq-dead", "pdlx")
x.queue_declare("pq-src", arguments={"x-dead-letter-exchange":"pdlx"})
x.basic_publish("amq.direct" if False else "", "pq-src", b"r1", pika.BasicProperties(headers={"a":1}, expiration="60000", delivery_mode=2, message_id="mid"))
m, p, b = x.basic_get("pq-src")
x.basic_reject(m.delivery_tag, requeue=False)
time.sleep(0.1)
m, p, b = x.basic_get("pq-dead", auto_ack=True)
print("rejected dl:", m.exchange, m.routing_key, m.redelivered, b, p)
# second round: republish same props into src and expire
x.queue_delete("pq-src")
x.queue_declare("pq-src", arguments={"x-dead-letter-exchange":"pdlx", "x-dead-letter-routing-key":"newrk", "x-message-ttl": 50})
x.basic_publish("", "pq-src", b"r2", p)
time.sleep(0.3)
m, p2, b = x.basic_get("pq-dead", auto_ack=True)
print("expired dl:", m and (m.exchange, m.routing_key, m.redelivered), b, p2)
# max length drop head
x.queue_declare("pq-ml", arguments={"x-max-length":2, "x-dead-letter-exchange":"pdlx"})
for i in range(5): x.basic_publish("", "pq-ml", b"%d"%i)
show("maxlen count", lambda: declare("pq-ml", None, True))
m, p3, b = x.basic_get("pq-ml", auto_ack=True); print("maxlen head", b)
for i in range(4):
    m, p3, b = x.basic_get("pq-dead", auto_ack=True); print("maxlen dl", b, m and m.routing_key, p3 and p3.headers)
# max length bytes
x.queue_delete("pq-ml")
x.queue_declare("pq-ml", arguments={"x-max-length-bytes":10})
for i in range(5): x.basic_publish("", "pq-ml", b"abcd")
show("maxbytes count", lambda: declare("pq-ml", None, True))
# reject-publish with confirms
x2 = ch()
x2.queue_declare("pq-rp", arguments={"x-max-length":1, "x-overflow":"reject-publish"})
x2.confirm_delivery()
for i in range(3):
    try:
        x2.basic_publish("", "pq-rp", b"%d"%i)
        print("rp publish", i, "acked")
    except Exception as e:
        print("rp publish", i, "ERR", repr(e))
show("rp count", lambda: declare("pq-rp", None, True))
# x-expires
x = ch()
x.queue_declare("pq-exp", arguments={"x-expires":200})
time.sleep(0.5)
show("expired queue passive", lambda: declare("pq-exp", None, True))
# nack multiple requeue false
x = ch()
x.queue_purge("pq-dead")
x.queue_delete("pq-src")
x.queue_declare("pq-src", arguments={"x-dead-letter-exchange":"pdlx"})
for i in range(3): x.basic_publish("", "pq-src", b"n%d"%i)
tags=[]
for i in range(3):
    m,_,_ = x.basic_get("pq-src"); tags.append(m.delivery_tag)
x.basic_nack(tags[-1], multiple=True, requeue=False)
time.sleep(0.1)
for i in range(3):
    m, p4, b = x.basic_get("pq-dead", auto_ack=True); print("nack dl", b, p4.headers["x-death"][0]["reason"], p4.headers["x-death"][0]["count"])
# cycle: queue ttl dead-letters to itself via default exchange
x.queue_declare("pq-cyc1", arguments={"x-message-ttl":50, "x-dead-letter-exchange":"", "x-dead-letter-routing-key":"pq-cyc1"})
x.basic_publish("", "pq-cyc1", b"c")
time.sleep(0.4)
show("cycle count", lambda: declare("pq-cyc1", None, True))
# dlx to nonexistent exchange
x.queue_delete("pq-src")
x.queue_declare("pq-src", arguments={"x-dead-letter-exchange":"nope-x"})
x.basic_publish("", "pq-src", b"z")
m,_,_ = x.basic_get("pq-src"); x.basic_reject(m.delivery_tag, requeue=False)
show("dlx missing count", lambda: declare("pq-src", None, True))
# queue.declare-ok of ttl=0 queue: publish with no consumer drops immediately
x.queue_delete("pq-ttl")
x.queue_declare("pq-ttl", arguments={"x-message-ttl":0})
x.basic_publish("", "pq-ttl", b"z")
show("ttl0 count", lambda: declare("pq-ttl", None, True))
x = ch()
for n in ["pq-ttl","pq-src","pq-dead","pq-ml","pq-rp","pq-exp","pq-cyc1"]:
    x.queue_delete(n)
x.exchange_delete("pdlx")
