#!/usr/bin/env python3
"""Probe of RabbitMQ's direct reply-to replies (pika): python3 probe_direct_reply.py PORT."""
import pika, sys, time
port = int(sys.argv[1]) if len(sys.argv) > 1 else 5672
P = pika.ConnectionParameters("127.0.0.1", port)
def show(label, f):
    try: print(label, "->", f())
    except Exception as e: print(label, "-> ERR", repr(e))
c = pika.BlockingConnection(P)
ch = c.channel()
show("passive declare", lambda: (lambda r: (r.method.queue, r.method.message_count, r.method.consumer_count))(ch.queue_declare("amq.rabbitmq.reply-to", passive=True)))
ch2 = c.channel()
show("consume with ack", lambda: ch2.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False))
ch3 = c.channel()
ch3.queue_declare("drt-server")
def pub_no_consumer():
    ch3.basic_publish("", "drt-server", b"req", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    time.sleep(0.2); return ch3.queue_declare("drt-server", passive=True).method.message_count
show("publish reply_to without consumer", pub_no_consumer)
# proper flow
cc = pika.BlockingConnection(P); client = cc.channel()
got = []
tag = client.basic_consume("amq.rabbitmq.reply-to", lambda ch, m, p, b: got.append((m.exchange, m.routing_key, m.redelivered, m.delivery_tag, b, p.correlation_id)), auto_ack=True)
print("consumer tag", tag)
show("second reply consumer same channel", lambda: client.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=True))
client = cc.channel()
tag = client.basic_consume("amq.rabbitmq.reply-to", lambda ch, m, p, b: got.append((m.exchange, m.routing_key, m.redelivered, m.delivery_tag, b, p.correlation_id)), auto_ack=True)
sc = pika.BlockingConnection(P); server = sc.channel(); server.queue_declare("drt-server2")
client.basic_publish("", "drt-server2", b"request", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
time.sleep(0.2)
m, p, b = server.basic_get("drt-server2", auto_ack=True)
print("server sees reply_to", p.reply_to[:40], len(p.reply_to))
server.basic_publish("", p.reply_to, b"response", pika.BasicProperties(correlation_id=p.correlation_id))
server.confirm_delivery()
try:
    server.basic_publish("", p.reply_to, b"response2", pika.BasicProperties(correlation_id="c2"), mandatory=True); print("mandatory reply ok")
except Exception as e: print("mandatory reply", repr(e))
cc.process_data_events(time_limit=0.5)
print("client got", got)
try:
    server.basic_publish("", "amq.rabbitmq.reply-to.bogus", b"x", mandatory=True); print("bogus mandatory: ok (no return)")
except Exception as e: print("bogus mandatory", repr(e))
try:
    server.basic_publish("", "amq.rabbitmq.reply-to", b"x", mandatory=True); print("plain name mandatory: ok")
except Exception as e: print("plain name mandatory", repr(e))
client.basic_cancel(tag)
try:
    server.basic_publish("", p.reply_to, b"late", mandatory=True); print("after cancel mandatory: ok")
except Exception as e: print("after cancel mandatory", repr(e))
for q in ["drt-server","drt-server2"]:
    sc.channel().queue_delete(q)
