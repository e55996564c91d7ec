#!/usr/bin/env python3
"""Probe of RabbitMQ's single active consumer and consumer priorities (pika): python3 probe_consumer_order.py PORT."""
import pika, sys, time
port = int(sys.argv[1]) if len(sys.argv) > 1 else 5672
P = pika.ConnectionParameters("127.0.0.1", port)
def show(label, f):
    try: print(label, "->", f())
    except Exception as e: print(label, "-> ERR", repr(e))
c = pika.BlockingConnection(P)
ch = c.channel()
show("sac string", lambda: ch.queue_declare("sac-bad", arguments={"x-single-active-consumer": "yes"}).method.queue)
ch = c.channel()
ch.queue_delete("sac-q")
r = ch.queue_declare("sac-q", arguments={"x-single-active-consumer": True})
got = []
t1 = ch.basic_consume("sac-q", lambda c_, m, p, b: got.append(("c1", b)), auto_ack=True, consumer_tag="c1")
t2 = ch.basic_consume("sac-q", lambda c_, m, p, b: got.append(("c2", b)), auto_ack=True, consumer_tag="c2")
print("declare-ok consumers", ch.queue_declare("sac-q", passive=True).method.consumer_count)
for i in range(4): ch.basic_publish("", "sac-q", b"%d" % i)
c.process_data_events(time_limit=0.3)
ch.basic_cancel("c1")
for i in range(4, 6): ch.basic_publish("", "sac-q", b"%d" % i)
c.process_data_events(time_limit=0.3)
print(got)
ch.queue_delete("sac-q")
# consumer priorities
ch.queue_delete("cp-q"); ch.queue_declare("cp-q")
got = []
ch.basic_qos(prefetch_count=2)
ch.basic_consume("cp-q", lambda c_, m, p, b: got.append(("low", b)), auto_ack=False, consumer_tag="low", arguments={"x-priority": 1})
ch.basic_consume("cp-q", lambda c_, m, p, b: got.append(("high", b)), auto_ack=False, consumer_tag="high", arguments={"x-priority": 10})
for i in range(5): ch.basic_publish("", "cp-q", b"%d" % i)
c.process_data_events(time_limit=0.3)
print(got)
ch2 = c.channel()
show("x-priority string", lambda: ch2.basic_consume("cp-q", lambda *a: None, arguments={"x-priority": "a"}))
ch.queue_delete("cp-q")
