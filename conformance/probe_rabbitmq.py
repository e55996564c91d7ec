#!/usr/bin/env python3
"""Raw-socket AMQP 0-9-1 edge-case probe.

Speaks AMQP 0-9-1 directly over a TCP socket (no client library) so that every
frame the broker sends is visible, including the class_id/method_id of
channel.close / connection.close.  Runs a fixed list of edge cases and prints a
markdown table of what the broker answered.

Usage:
    python3 probe_rabbitmq.py [--host 127.0.0.1] [--port 5672] [--user guest]
                              [--password guest] [--vhost /] [--only SUBSTR]

Only standard library.  Re-run against RabbitMQ and against warren and diff the
tables to spot behavioural differences (random names are normalised to
placeholders like <Q>, <X>, <CTAG> so runs are diffable).
"""
import argparse
import io
import os
import random
import re
import socket
import string
import struct
import sys
import time

# ---------------------------------------------------------------------------
# Protocol spec (AMQP 0-9-1)  (class_id, method_id) -> (name, [(field, type)])
# types: o=octet s=short l=long L=longlong S=shortstr T=longstr F=table b=bit
# ---------------------------------------------------------------------------
METHODS = {
    (10, 10): ("connection.start", [("version_major", "o"), ("version_minor", "o"), ("server_properties", "F"), ("mechanisms", "T"), ("locales", "T")]),
    (10, 11): ("connection.start-ok", [("client_properties", "F"), ("mechanism", "S"), ("response", "T"), ("locale", "S")]),
    (10, 20): ("connection.secure", [("challenge", "T")]),
    (10, 21): ("connection.secure-ok", [("response", "T")]),
    (10, 30): ("connection.tune", [("channel_max", "s"), ("frame_max", "l"), ("heartbeat", "s")]),
    (10, 31): ("connection.tune-ok", [("channel_max", "s"), ("frame_max", "l"), ("heartbeat", "s")]),
    (10, 40): ("connection.open", [("virtual_host", "S"), ("reserved_1", "S"), ("reserved_2", "b")]),
    (10, 41): ("connection.open-ok", [("reserved_1", "S")]),
    (10, 50): ("connection.close", [("reply_code", "s"), ("reply_text", "S"), ("class_id", "s"), ("method_id", "s")]),
    (10, 51): ("connection.close-ok", []),
    (10, 60): ("connection.blocked", [("reason", "S")]),
    (10, 61): ("connection.unblocked", []),
    (20, 10): ("channel.open", [("reserved_1", "S")]),
    (20, 11): ("channel.open-ok", [("reserved_1", "T")]),
    (20, 20): ("channel.flow", [("active", "b")]),
    (20, 21): ("channel.flow-ok", [("active", "b")]),
    (20, 40): ("channel.close", [("reply_code", "s"), ("reply_text", "S"), ("class_id", "s"), ("method_id", "s")]),
    (20, 41): ("channel.close-ok", []),
    (40, 10): ("exchange.declare", [("reserved_1", "s"), ("exchange", "S"), ("type", "S"), ("passive", "b"), ("durable", "b"), ("auto_delete", "b"), ("internal", "b"), ("no_wait", "b"), ("arguments", "F")]),
    (40, 11): ("exchange.declare-ok", []),
    (40, 20): ("exchange.delete", [("reserved_1", "s"), ("exchange", "S"), ("if_unused", "b"), ("no_wait", "b")]),
    (40, 21): ("exchange.delete-ok", []),
    (40, 30): ("exchange.bind", [("reserved_1", "s"), ("destination", "S"), ("source", "S"), ("routing_key", "S"), ("no_wait", "b"), ("arguments", "F")]),
    (40, 31): ("exchange.bind-ok", []),
    (40, 40): ("exchange.unbind", [("reserved_1", "s"), ("destination", "S"), ("source", "S"), ("routing_key", "S"), ("no_wait", "b"), ("arguments", "F")]),
    (40, 51): ("exchange.unbind-ok", []),
    (50, 10): ("queue.declare", [("reserved_1", "s"), ("queue", "S"), ("passive", "b"), ("durable", "b"), ("exclusive", "b"), ("auto_delete", "b"), ("no_wait", "b"), ("arguments", "F")]),
    (50, 11): ("queue.declare-ok", [("queue", "S"), ("message_count", "l"), ("consumer_count", "l")]),
    (50, 20): ("queue.bind", [("reserved_1", "s"), ("queue", "S"), ("exchange", "S"), ("routing_key", "S"), ("no_wait", "b"), ("arguments", "F")]),
    (50, 21): ("queue.bind-ok", []),
    (50, 30): ("queue.purge", [("reserved_1", "s"), ("queue", "S"), ("no_wait", "b")]),
    (50, 31): ("queue.purge-ok", [("message_count", "l")]),
    (50, 40): ("queue.delete", [("reserved_1", "s"), ("queue", "S"), ("if_unused", "b"), ("if_empty", "b"), ("no_wait", "b")]),
    (50, 41): ("queue.delete-ok", [("message_count", "l")]),
    (50, 50): ("queue.unbind", [("reserved_1", "s"), ("queue", "S"), ("exchange", "S"), ("routing_key", "S"), ("arguments", "F")]),
    (50, 51): ("queue.unbind-ok", []),
    (60, 10): ("basic.qos", [("prefetch_size", "l"), ("prefetch_count", "s"), ("global", "b")]),
    (60, 11): ("basic.qos-ok", []),
    (60, 20): ("basic.consume", [("reserved_1", "s"), ("queue", "S"), ("consumer_tag", "S"), ("no_local", "b"), ("no_ack", "b"), ("exclusive", "b"), ("no_wait", "b"), ("arguments", "F")]),
    (60, 21): ("basic.consume-ok", [("consumer_tag", "S")]),
    (60, 30): ("basic.cancel", [("consumer_tag", "S"), ("no_wait", "b")]),
    (60, 31): ("basic.cancel-ok", [("consumer_tag", "S")]),
    (60, 40): ("basic.publish", [("reserved_1", "s"), ("exchange", "S"), ("routing_key", "S"), ("mandatory", "b"), ("immediate", "b")]),
    (60, 50): ("basic.return", [("reply_code", "s"), ("reply_text", "S"), ("exchange", "S"), ("routing_key", "S")]),
    (60, 60): ("basic.deliver", [("consumer_tag", "S"), ("delivery_tag", "L"), ("redelivered", "b"), ("exchange", "S"), ("routing_key", "S")]),
    (60, 70): ("basic.get", [("reserved_1", "s"), ("queue", "S"), ("no_ack", "b")]),
    (60, 71): ("basic.get-ok", [("delivery_tag", "L"), ("redelivered", "b"), ("exchange", "S"), ("routing_key", "S"), ("message_count", "l")]),
    (60, 72): ("basic.get-empty", [("reserved_1", "S")]),
    (60, 80): ("basic.ack", [("delivery_tag", "L"), ("multiple", "b")]),
    (60, 90): ("basic.reject", [("delivery_tag", "L"), ("requeue", "b")]),
    (60, 100): ("basic.recover-async", [("requeue", "b")]),
    (60, 110): ("basic.recover", [("requeue", "b")]),
    (60, 111): ("basic.recover-ok", []),
    (60, 120): ("basic.nack", [("delivery_tag", "L"), ("multiple", "b"), ("requeue", "b")]),
    (85, 10): ("confirm.select", [("nowait", "b")]),
    (85, 11): ("confirm.select-ok", []),
    (90, 10): ("tx.select", []),
    (90, 11): ("tx.select-ok", []),
    (90, 20): ("tx.commit", []),
    (90, 21): ("tx.commit-ok", []),
    (90, 30): ("tx.rollback", []),
    (90, 31): ("tx.rollback-ok", []),
}
BY_NAME = {v[0]: (k, v[1]) for k, v in METHODS.items()}

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE

BASIC_PROPS = [("content_type", "S"), ("content_encoding", "S"), ("headers", "F"), ("delivery_mode", "o"),
               ("priority", "o"), ("correlation_id", "S"), ("reply_to", "S"), ("expiration", "S"),
               ("message_id", "S"), ("timestamp", "L"), ("type", "S"), ("user_id", "S"), ("app_id", "S"),
               ("cluster_id", "S")]


# ---------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------
def enc_shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("B", len(b)) + b


def enc_longstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


class Long(int):
    """int encoded as signed 64-bit ('l') in field tables."""


def enc_value(v):
    if isinstance(v, Long):
        return b"l" + struct.pack(">q", v)
    if isinstance(v, bool):
        return b"t" + struct.pack("B", 1 if v else 0)
    if isinstance(v, int):
        if -2**31 <= v < 2**31:
            return b"I" + struct.pack(">i", v)
        return b"l" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, str):
        return b"S" + enc_longstr(v)
    if isinstance(v, bytes):
        return b"x" + enc_longstr(v)
    if isinstance(v, dict):
        return b"F" + enc_table(v)
    if isinstance(v, (list, tuple)):
        body = b"".join(enc_value(x) for x in v)
        return b"A" + struct.pack(">I", len(body)) + body
    if v is None:
        return b"V"
    raise TypeError(v)


def enc_table(d):
    body = b"".join(enc_shortstr(k) + enc_value(v) for k, v in (d or {}).items())
    return struct.pack(">I", len(body)) + body


class Reader:
    def __init__(self, data):
        self.b = io.BytesIO(data)

    def read(self, n):
        d = self.b.read(n)
        if len(d) != n:
            raise ValueError("short read")
        return d

    def u(self, fmt):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def shortstr(self):
        return self.read(self.u("B")).decode("utf-8", "replace")

    def longstr(self):
        return self.read(self.u(">I"))

    def table(self):
        r = Reader(self.longstr())
        out = {}
        while r.b.tell() < len(r.b.getvalue()):
            k = r.shortstr()
            out[k] = r.value()
        return out

    def value(self):
        t = self.read(1)
        if t == b"t": return bool(self.u("B"))
        if t == b"b": return self.u("b")
        if t == b"B": return self.u("B")
        if t == b"s": return self.u(">h")
        if t == b"u": return self.u(">H")
        if t == b"I": return self.u(">i")
        if t == b"i": return self.u(">I")
        if t == b"l": return self.u(">q")
        if t == b"f": return self.u(">f")
        if t == b"d": return self.u(">d")
        if t == b"D":
            sc = self.u("B"); v = self.u(">i"); return ("decimal", sc, v)
        if t == b"S": return self.longstr().decode("utf-8", "replace")
        if t == b"x": return self.longstr()
        if t == b"T": return ("timestamp", self.u(">Q"))
        if t == b"F": return self.table()
        if t == b"V": return None
        if t == b"A":
            r = Reader(self.longstr()); out = []
            while r.b.tell() < len(r.b.getvalue()):
                out.append(r.value())
            return out
        raise ValueError("unknown field type %r" % t)


def encode_args(fields, kw):
    out = b""
    bits = []

    def flush():
        nonlocal out, bits
        if bits:
            for i in range(0, len(bits), 8):
                byte = 0
                for j, bv in enumerate(bits[i:i + 8]):
                    if bv:
                        byte |= 1 << j
                out += struct.pack("B", byte)
            bits = []

    for name, t in fields:
        v = kw.get(name)
        if t == "b":
            bits.append(bool(v))
            continue
        flush()
        if t == "o": out += struct.pack("B", v or 0)
        elif t == "s": out += struct.pack(">H", v or 0)
        elif t == "l": out += struct.pack(">I", v or 0)
        elif t == "L": out += struct.pack(">Q", v or 0)
        elif t == "S": out += enc_shortstr(v or "")
        elif t == "T": out += enc_longstr(v or b"")
        elif t == "F": out += enc_table(v or {})
    flush()
    return out


def decode_args(fields, r):
    out = {}
    bitbyte, bitpos = 0, 8
    for name, t in fields:
        if t == "b":
            if bitpos >= 8:
                bitbyte, bitpos = r.u("B"), 0
            out[name] = bool(bitbyte & (1 << bitpos))
            bitpos += 1
            continue
        bitpos = 8
        if t == "o": out[name] = r.u("B")
        elif t == "s": out[name] = r.u(">H")
        elif t == "l": out[name] = r.u(">I")
        elif t == "L": out[name] = r.u(">Q")
        elif t == "S": out[name] = r.shortstr()
        elif t == "T": out[name] = r.longstr()
        elif t == "F": out[name] = r.table()
    return out


def encode_props(props):
    flags, body = 0, b""
    for i, (name, t) in enumerate(BASIC_PROPS):
        if name in props and props[name] is not None:
            flags |= 1 << (15 - i)
            v = props[name]
            if t == "S": body += enc_shortstr(v)
            elif t == "F": body += enc_table(v)
            elif t == "o": body += struct.pack("B", v)
            elif t == "L": body += struct.pack(">Q", v)
    return struct.pack(">H", flags) + body


def decode_props(r):
    flags = r.u(">H")
    out = {}
    for i, (name, t) in enumerate(BASIC_PROPS):
        if flags & (1 << (15 - i)):
            if t == "S": out[name] = r.shortstr()
            elif t == "F": out[name] = r.table()
            elif t == "o": out[name] = r.u("B")
            elif t == "L": out[name] = r.u(">Q")
    return out


class Frame:
    def __init__(self, ftype, channel, payload):
        self.type, self.channel, self.payload = ftype, channel, payload
        self.name, self.args, self.cm = None, None, None
        if ftype == FRAME_METHOD:
            r = Reader(payload)
            self.cm = (r.u(">H"), r.u(">H"))
            name, fields = METHODS.get(self.cm, ("unknown.%d.%d" % self.cm, []))
            self.name = name
            self.args = decode_args(fields, r)
        elif ftype == FRAME_HEADER:
            r = Reader(payload)
            cls, _w, size = r.u(">H"), r.u(">H"), r.u(">Q")
            self.name = "content-header"
            self.args = {"class_id": cls, "body_size": size, "properties": decode_props(r)}
        elif ftype == FRAME_BODY:
            self.name = "content-body"
            self.args = {"body": payload}
        elif ftype == FRAME_HEARTBEAT:
            self.name = "heartbeat"
            self.args = {}

    def __repr__(self):
        return "Frame(ch=%d %s %r)" % (self.channel, self.name, self.args)


class Closed(Exception):
    pass


# ---------------------------------------------------------------------------
# Raw connection
# ---------------------------------------------------------------------------
class Conn:
    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.pending = []
        self.closed = False
        self.frame_max = 131072

    # -- low level -----------------------------------------------------------
    def send_raw(self, data):
        self.sock.sendall(data)

    @staticmethod
    def frame_bytes(ftype, ch, payload):
        return struct.pack(">BHI", ftype, ch, len(payload)) + payload + bytes([FRAME_END])

    def send_frame(self, ftype, ch, payload):
        self.send_raw(struct.pack(">BHI", ftype, ch, len(payload)) + payload + bytes([FRAME_END]))

    def send(self, ch, name, **kw):
        (cid, mid), fields = BY_NAME[name]
        self.send_frame(FRAME_METHOD, ch, struct.pack(">HH", cid, mid) + encode_args(fields, kw))

    def send_content(self, ch, body=b"", props=None, class_id=60):
        props = props or {}
        self.send_frame(FRAME_HEADER, ch, struct.pack(">HHQ", class_id, 0, len(body)) + encode_props(props))
        if body:
            self.send_frame(FRAME_BODY, ch, body)

    def publish(self, ch, exchange, rk, body=b"x", mandatory=False, immediate=False, props=None):
        self.send(ch, "basic.publish", exchange=exchange, routing_key=rk, mandatory=mandatory, immediate=immediate)
        self.send_content(ch, body, props)

    def _fill(self, n, timeout):
        deadline = time.time() + timeout
        while len(self.buf) < n:
            left = deadline - time.time()
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            d = self.sock.recv(65536)
            if not d:
                raise Closed("socket closed by peer")
            self.buf += d

    def read_bytes_raw(self, timeout=2.0):
        """Read whatever arrives (used for protocol-header replies)."""
        out = b""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return out, "timeout"
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                return out, "timeout"
            except ConnectionResetError:
                return out, "reset"
            if not d:
                return out, "eof"
            out += d

    def read_frame(self, timeout=2.0):
        self._fill(7, timeout)
        ftype, ch, size = struct.unpack(">BHI", self.buf[:7])
        self._fill(7 + size + 1, timeout)
        payload = self.buf[7:7 + size]
        end = self.buf[7 + size]
        self.buf = self.buf[8 + size:]
        if end != FRAME_END:
            raise ValueError("bad frame end")
        return Frame(ftype, ch, payload)

    def read_frames(self, timeout=1.0, stop_on_close=True):
        """Collect frames until quiet for `timeout` seconds (or a close)."""
        frames = []
        while self.pending:
            f = self.pending.pop(0)
            frames.append(f)
            if stop_on_close and f.name == "connection.close":
                return frames
        while True:
            try:
                f = self.read_frame(timeout)
            except socket.timeout:
                break
            except (Closed, ConnectionResetError, BrokenPipeError):
                frames.append("EOF")
                break
            if f.type == FRAME_HEARTBEAT:
                continue
            frames.append(f)
            self._auto_reply(f)
            if stop_on_close and f.name in ("connection.close",):
                break
        return frames

    def _auto_reply(self, f):
        try:
            if f.name == "channel.close":
                self.send(f.channel, "channel.close-ok")
            elif f.name == "connection.close":
                self.send(0, "connection.close-ok")
                self.closed = True
        except OSError:
            pass

    def wait(self, ch, names, timeout=3.0):
        """Wait for one of `names` on channel `ch`; returns frame.  A channel or
        connection close is returned too (and auto-acknowledged)."""
        if isinstance(names, str):
            names = (names,)
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            try:
                f = self.read_frame(left)
            except socket.timeout:
                return None
            except (Closed, ConnectionResetError, BrokenPipeError):
                return "EOF"
            if f.type == FRAME_HEARTBEAT:
                continue
            self._auto_reply(f)
            if f.name == "connection.close":
                return f
            if f.channel == ch and (f.name in names or f.name == "channel.close"):
                if f.name in ("basic.get-ok", "basic.deliver", "basic.return"):
                    self._read_content(f, deadline)
                return f
            self.pending.append(f)

    def _read_content(self, f, deadline):
        """Attach (properties, body) of a content-bearing method to f.content."""
        h = self.read_frame(max(0.1, deadline - time.time()))
        body = b""
        while len(body) < h.args["body_size"]:
            body += self.read_frame(max(0.1, deadline - time.time())).args["body"]
        f.content = (h.args["properties"], body)

    def call(self, ch, name, **kw):
        self.send(ch, name, **kw)
        reply = name + "-ok"
        if name == "basic.get":
            reply = ("basic.get-ok", "basic.get-empty")
        if name == "basic.recover-async":
            reply = ()
        return self.wait(ch, reply)

    # -- handshake -------------------------------------------------------------
    def handshake(self, user="guest", password="guest", vhost="/", capabilities=None,
                  tune=None, open_vhost=True):
        self.send_raw(b"AMQP\x00\x00\x09\x01")
        start = self.read_frame(5)
        assert start.name == "connection.start", start
        self.start = start
        caps = capabilities if capabilities is not None else {
            "authentication_failure_close": True, "basic.nack": True, "connection.blocked": True,
            "consumer_cancel_notify": True, "publisher_confirms": True, "exchange_exchange_bindings": True}
        props = {"product": "warren-probe", "capabilities": caps}
        self.send(0, "connection.start-ok", client_properties=props, mechanism="PLAIN",
                  response=b"\x00" + user.encode() + b"\x00" + password.encode(), locale="en_US")
        try:
            f = self.read_frame(6)
        except (Closed, ConnectionResetError):
            return "EOF"
        except socket.timeout:
            return None
        if f.name != "connection.tune":
            self._auto_reply(f)
            return f
        self.tune = f.args
        t = dict(channel_max=f.args["channel_max"], frame_max=f.args["frame_max"], heartbeat=0)
        if tune:
            t.update(tune)
        self.negotiated = t
        self.send(0, "connection.tune-ok", **t)
        if not open_vhost:
            return f
        self.send(0, "connection.open", virtual_host=vhost)
        return self.wait(0, "connection.open-ok", timeout=6.0)

    def open_channel(self, ch):
        return self.call(ch, "channel.open")

    def close(self):
        try:
            if not self.closed:
                self.send(0, "connection.close", reply_code=200, reply_text="bye")
                self.wait(0, "connection.close-ok", timeout=1)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------
NAMES = {}


def norm(text):
    for real, ph in sorted(NAMES.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(real, ph)
    text = re.sub(r"amq\.gen-[A-Za-z0-9_\-]{22}", "amq.gen-<22 chars>", text)
    text = re.sub(r"amq\.ctag-[A-Za-z0-9_\-]{22}", "amq.ctag-<22 chars>", text)
    text = re.sub(r"<0\.\d+\.\d+>", "<pid>", text)
    return text


def fmt(f):
    if f is None:
        return "no reply (timeout)"
    if f == "EOF":
        return "socket closed (EOF)"
    if isinstance(f, str):
        return f
    if f.name in ("channel.close", "connection.close"):
        kind = "CHANNEL CLOSE" if f.name == "channel.close" else "CONNECTION CLOSE"
        a = f.args
        return "%s %d `%s` (class %d, method %d)" % (kind, a["reply_code"], a["reply_text"], a["class_id"], a["method_id"])
    if f.name == "basic.return":
        a = f.args
        return "basic.return %d `%s` ex=`%s` rk=`%s`" % (a["reply_code"], a["reply_text"], a["exchange"], a["routing_key"])
    if f.name in ("basic.ack", "basic.nack"):
        return "%s(tag=%d,multiple=%s)" % (f.name, f.args["delivery_tag"], f.args["multiple"])
    if f.name == "queue.declare-ok":
        return "queue.declare-ok(queue=`%s`, msgs=%d, consumers=%d)" % (f.args["queue"], f.args["message_count"], f.args["consumer_count"])
    if f.name in ("queue.delete-ok", "queue.purge-ok"):
        return "%s(msgs=%d)" % (f.name, f.args["message_count"])
    if f.name == "basic.deliver":
        return "basic.deliver(tag=%d, redelivered=%s)" % (f.args["delivery_tag"], f.args["redelivered"])
    if f.name == "basic.get-ok":
        return "basic.get-ok(tag=%d, redelivered=%s)" % (f.args["delivery_tag"], f.args["redelivered"])
    if f.name in ("content-header", "content-body"):
        return f.name
    if f.channel is not None and f.name:
        return f.name
    return repr(f)


def fmt_seq(frames):
    if not frames:
        return "no reply (timeout)"
    out = [fmt(f) for f in frames if not (isinstance(f, Frame) and f.name in ("content-header", "content-body"))]
    return " → ".join(out)


def uniq(prefix):
    s = prefix + "-" + "".join(random.choice(string.ascii_lowercase) for _ in range(8))
    return s


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------
CASES = []


def case(title):
    def deco(fn):
        CASES.append((title, fn))
        return fn
    return deco


class Env:
    def __init__(self, args):
        self.a = args

    def conn(self, **kw):
        c = Conn(self.a.host, self.a.port)
        r = c.handshake(self.a.user, self.a.password, self.a.vhost, **kw)
        assert r is not None and getattr(r, "name", None) == "connection.open-ok", fmt(r)
        return c

    def chan(self, **kw):
        c = self.conn(**kw)
        r = c.open_channel(1)
        assert r.name == "channel.open-ok", fmt(r)
        return c

    def name(self, ph, prefix="probe"):
        n = uniq(prefix)
        NAMES[n] = ph
        return n

    def cleanup_q(self, *qs):
        c = self.chan()
        for q in qs:
            r = c.call(1, "queue.delete", queue=q)
            if getattr(r, "name", "") == "channel.close":
                c.open_channel(1)
        c.close()

    def cleanup_x(self, *xs):
        c = self.chan()
        for x in xs:
            r = c.call(1, "exchange.delete", exchange=x)
            if getattr(r, "name", "") == "channel.close":
                c.open_channel(1)
        c.close()


# ---- exchange.declare -------------------------------------------------------
@case("exchange.declare `amq.<new>` (non-passive)")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange=e.name("amq.<X>", "amq.probe"), type="direct")
    c.close(); return fmt(r)


@case("exchange.declare `amq.<new>` passive")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange=e.name("amq.<X>", "amq.probe"), type="direct", passive=True)
    c.close(); return fmt(r)


@case("exchange.declare redeclare existing (direct) as fanout")
def _(e):
    c = e.chan(); x = e.name("<X>")
    c.call(1, "exchange.declare", exchange=x, type="direct")
    r = c.call(1, "exchange.declare", exchange=x, type="fanout")
    c.close(); e.cleanup_x(x); return fmt(r)


@case("exchange.declare redeclare existing with durable=true (was false)")
def _(e):
    c = e.chan(); x = e.name("<X>")
    c.call(1, "exchange.declare", exchange=x, type="direct")
    r = c.call(1, "exchange.declare", exchange=x, type="direct", durable=True)
    c.close(); e.cleanup_x(x); return fmt(r)


@case("exchange.declare redeclare existing with auto_delete=true (was false)")
def _(e):
    c = e.chan(); x = e.name("<X>")
    c.call(1, "exchange.declare", exchange=x, type="direct")
    r = c.call(1, "exchange.declare", exchange=x, type="direct", auto_delete=True)
    c.close(); e.cleanup_x(x); return fmt(r)


@case("exchange.declare redeclare existing with internal=true (was false)")
def _(e):
    c = e.chan(); x = e.name("<X>")
    c.call(1, "exchange.declare", exchange=x, type="direct")
    r = c.call(1, "exchange.declare", exchange=x, type="direct", internal=True)
    c.close(); e.cleanup_x(x); return fmt(r)


@case("exchange.declare redeclare existing with different arguments")
def _(e):
    c = e.chan(); x = e.name("<X>")
    c.call(1, "exchange.declare", exchange=x, type="direct")
    r = c.call(1, "exchange.declare", exchange=x, type="direct", arguments={"alternate-exchange": "foo"})
    c.close(); e.cleanup_x(x); return fmt(r)


@case("exchange.declare passive existing with different type (fanout vs direct)")
def _(e):
    c = e.chan(); x = e.name("<X>")
    c.call(1, "exchange.declare", exchange=x, type="direct")
    r = c.call(1, "exchange.declare", exchange=x, type="fanout", passive=True, durable=True)
    c.close(); e.cleanup_x(x); return fmt(r)


@case("exchange.declare unknown type `foo`")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange=e.name("<X>"), type="foo")
    c.close(); return fmt(r)


@case("exchange.declare empty type ``")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange=e.name("<X>"), type="")
    c.close(); return fmt(r)


@case("exchange.declare passive of missing exchange")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange=e.name("<X>"), type="direct", passive=True)
    c.close(); return fmt(r)


@case("exchange.declare `amq.direct` non-passive, same type/flags (durable=true)")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange="amq.direct", type="direct", durable=True)
    c.close(); return fmt(r)


@case("exchange.declare `amq.direct` non-passive, durable=false")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange="amq.direct", type="direct", durable=False)
    c.close(); return fmt(r)


@case("exchange.declare `amq.direct` non-passive, type fanout")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange="amq.direct", type="fanout", durable=True)
    c.close(); return fmt(r)


@case("exchange.declare `amq.direct` passive")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange="amq.direct", passive=True)
    c.close(); return fmt(r)


@case("exchange.declare default exchange `` (direct, durable)")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange="", type="direct", durable=True)
    c.close(); return fmt(r)


@case("exchange.declare default exchange `` passive")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.declare", exchange="", type="direct", passive=True)
    c.close(); return fmt(r)


@case("exchange.declare name with space/punctuation (`bad name!-…`)")
def _(e):
    c = e.chan()
    x = e.name("<X>", "bad name!")
    r = c.call(1, "exchange.declare", exchange=x, type="direct")
    c.close(); e.cleanup_x(x); return fmt(r)


@case("exchange.delete missing exchange")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.delete", exchange=e.name("<X>"))
    c.close(); return fmt(r)


@case("exchange.delete `amq.direct`")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.delete", exchange="amq.direct")
    c.close(); return fmt(r)


@case("exchange.delete default exchange ``")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.delete", exchange="")
    c.close(); return fmt(r)


@case("exchange.delete if_unused=true with a queue binding")
def _(e):
    c = e.chan(); x = e.name("<X>"); q = e.name("<Q>")
    c.call(1, "exchange.declare", exchange=x, type="direct")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "queue.bind", queue=q, exchange=x, routing_key="k")
    r = c.call(1, "exchange.delete", exchange=x, if_unused=True)
    c.close(); e.cleanup_x(x); return fmt(r)


@case("exchange.delete if_unused=true with no bindings")
def _(e):
    c = e.chan(); x = e.name("<X>")
    c.call(1, "exchange.declare", exchange=x, type="direct")
    r = c.call(1, "exchange.delete", exchange=x, if_unused=True)
    c.close(); return fmt(r)


# ---- queue.declare ------------------------------------------------------------
@case("queue.declare `amq.foo` (non-passive)")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.declare", queue=e.name("amq.<Q>", "amq.probe"))
    c.close(); return fmt(r)


@case("queue.declare `amq.foo` passive (missing)")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.declare", queue=e.name("amq.<Q>", "amq.probe"), passive=True)
    c.close(); return fmt(r)


@case("queue.declare redeclare with different durable")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q)
    r = c.call(1, "queue.declare", queue=q, durable=True)
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare redeclare with different auto_delete")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q)
    r = c.call(1, "queue.declare", queue=q, auto_delete=True)
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare redeclare (same conn) non-exclusive queue as exclusive")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q)
    r = c.call(1, "queue.declare", queue=q, exclusive=True)
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare redeclare (same conn) exclusive queue as non-exclusive")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "queue.declare", queue=q, exclusive=False)
    c.close(); return fmt(r)


@case("queue.declare redeclare with x-message-ttl added (none before)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q)
    r = c.call(1, "queue.declare", queue=q, arguments={"x-message-ttl": 1000})
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare redeclare with x-message-ttl 1000 → 2000")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, arguments={"x-message-ttl": 1000})
    r = c.call(1, "queue.declare", queue=q, arguments={"x-message-ttl": 2000})
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare redeclare dropping x-message-ttl (1000 → none)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, arguments={"x-message-ttl": 1000})
    r = c.call(1, "queue.declare", queue=q)
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare redeclare x-message-ttl 1000 as int32 then as int64 (`l`)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, arguments={"x-message-ttl": 1000})
    r = c.call(1, "queue.declare", queue=q, arguments={"x-message-ttl": Long(1000)})
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare x-message-ttl = -1 (invalid)")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.declare", queue=e.name("<Q>"), arguments={"x-message-ttl": -1})
    c.close(); return fmt(r)


@case("queue.declare x-message-ttl as string (invalid type)")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.declare", queue=e.name("<Q>"), arguments={"x-message-ttl": "1000"})
    c.close(); return fmt(r)


@case("queue.declare redeclare with unknown x-foo argument added")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q)
    r = c.call(1, "queue.declare", queue=q, arguments={"x-foo": "bar"})
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare passive existing with different durable flag (flags ignored?)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q)
    r = c.call(1, "queue.declare", queue=q, passive=True, durable=True, arguments={"x-message-ttl": 5})
    c.close(); e.cleanup_q(q); return fmt(r)


@case("queue.declare passive of missing queue")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.declare", queue=e.name("<Q>"), passive=True)
    c.close(); return fmt(r)


@case("queue.declare passive with empty name (no last queue on channel)")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.declare", queue="", passive=True)
    c.close(); return fmt(r)


@case("queue.declare server-named (empty name)")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.declare", queue="", exclusive=True)
    name = r.args["queue"]
    c.close()
    return fmt(r) + " — raw name e.g. `%s` (len %d)" % ("amq.gen-" + "X" * (len(name) - 8), len(name))


def _excl_setup(e):
    a = e.chan(); q = e.name("<Q>")
    a.call(1, "queue.declare", queue=q, exclusive=True)
    b = e.chan()
    return a, b, q


@case("other connection: queue.declare (same args) of exclusive queue")
def _(e):
    a, b, q = _excl_setup(e)
    r = b.call(1, "queue.declare", queue=q, exclusive=True)
    a.close(); b.close(); return fmt(r)


@case("other connection: queue.declare non-exclusive of exclusive queue")
def _(e):
    a, b, q = _excl_setup(e)
    r = b.call(1, "queue.declare", queue=q)
    a.close(); b.close(); return fmt(r)


@case("other connection: passive queue.declare of exclusive queue")
def _(e):
    a, b, q = _excl_setup(e)
    r = b.call(1, "queue.declare", queue=q, passive=True)
    a.close(); b.close(); return fmt(r)


@case("other connection: basic.consume on exclusive queue")
def _(e):
    a, b, q = _excl_setup(e)
    r = b.call(1, "basic.consume", queue=q)
    a.close(); b.close(); return fmt(r)


@case("other connection: basic.get on exclusive queue")
def _(e):
    a, b, q = _excl_setup(e)
    r = b.call(1, "basic.get", queue=q)
    a.close(); b.close(); return fmt(r)


@case("other connection: queue.delete of exclusive queue")
def _(e):
    a, b, q = _excl_setup(e)
    r = b.call(1, "queue.delete", queue=q)
    a.close(); b.close(); return fmt(r)


@case("other connection: queue.purge of exclusive queue")
def _(e):
    a, b, q = _excl_setup(e)
    r = b.call(1, "queue.purge", queue=q)
    a.close(); b.close(); return fmt(r)


@case("other connection: queue.bind of exclusive queue")
def _(e):
    a, b, q = _excl_setup(e)
    r = b.call(1, "queue.bind", queue=q, exchange="amq.direct", routing_key="k")
    a.close(); b.close(); return fmt(r)


@case("other connection: basic.publish to exclusive queue (default exchange)")
def _(e):
    a, b, q = _excl_setup(e)
    b.call(1, "confirm.select")
    b.publish(1, "", q, mandatory=True)
    fr = b.read_frames(1.0)
    a.close(); b.close(); return fmt_seq(fr) + " (publish allowed)"


@case("queue.delete missing queue")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.delete", queue=e.name("<Q>"))
    c.close(); return fmt(r)


@case("queue.delete if_unused=true with a consumer")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    r = c.call(1, "queue.delete", queue=q, if_unused=True)
    c.close(); return fmt(r)


@case("queue.delete if_empty=true with messages")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "confirm.select"); c.publish(1, "", q); c.wait(1, "basic.ack")
    r = c.call(1, "queue.delete", queue=q, if_empty=True)
    c.close(); return fmt(r)


@case("queue.delete with 2 messages (ok returns count)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "confirm.select"); c.publish(1, "", q); c.publish(1, "", q)
    c.wait(1, "basic.ack"); c.wait(1, "basic.ack")
    r = c.call(1, "queue.delete", queue=q)
    c.close(); return fmt(r)


@case("queue.bind to missing exchange")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "queue.bind", queue=q, exchange=e.name("<X>"), routing_key="k")
    c.close(); return fmt(r)


@case("queue.bind missing queue to existing exchange")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.bind", queue=e.name("<Q>"), exchange="amq.direct", routing_key="k")
    c.close(); return fmt(r)


@case("queue.bind missing queue to missing exchange")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.bind", queue=e.name("<Q>"), exchange=e.name("<X>"), routing_key="k")
    c.close(); return fmt(r)


@case("queue.bind to default exchange ``")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "queue.bind", queue=q, exchange="", routing_key="k")
    c.close(); return fmt(r)


@case("queue.unbind from default exchange ``")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "queue.unbind", queue=q, exchange="", routing_key=q)
    c.close(); return fmt(r)


@case("queue.bind with empty queue name, no prior declare on channel")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.bind", queue="", exchange="amq.direct", routing_key="k")
    c.close(); return fmt(r)


@case("queue.bind with empty queue name after declare (uses last queue)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "queue.bind", queue="", exchange="amq.direct", routing_key="k")
    c.close(); return fmt(r)


@case("queue.unbind nonexistent binding (queue+exchange exist)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "queue.unbind", queue=q, exchange="amq.direct", routing_key="nope")
    c.close(); return fmt(r)


@case("queue.unbind with missing exchange")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "queue.unbind", queue=q, exchange=e.name("<X>"), routing_key="k")
    c.close(); return fmt(r)


@case("queue.unbind with missing queue")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.unbind", queue=e.name("<Q>"), exchange="amq.direct", routing_key="k")
    c.close(); return fmt(r)


@case("queue.purge missing queue")
def _(e):
    c = e.chan()
    r = c.call(1, "queue.purge", queue=e.name("<Q>"))
    c.close(); return fmt(r)


@case("exchange.bind (e2e) with missing source")
def _(e):
    c = e.chan()
    r = c.call(1, "exchange.bind", destination="amq.fanout", source=e.name("<X>"), routing_key="k")
    c.close(); return fmt(r)


# ---- basic.publish ------------------------------------------------------------
@case("basic.publish to missing exchange")
def _(e):
    c = e.chan()
    c.publish(1, e.name("<X>"), "k")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.publish to missing exchange (in confirm mode)")
def _(e):
    c = e.chan(); c.call(1, "confirm.select")
    c.publish(1, e.name("<X>"), "k")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.publish to internal exchange")
def _(e):
    c = e.chan(); x = e.name("<X>")
    c.call(1, "exchange.declare", exchange=x, type="fanout", internal=True, auto_delete=False)
    c.publish(1, x, "k")
    fr = c.read_frames(1.0)
    c.close(); e.cleanup_x(x); return fmt_seq(fr)


@case("basic.publish to `amq.default` (alias of default?)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "confirm.select")
    c.publish(1, "amq.default", q, mandatory=True)
    fr = c.read_frames(1.0)
    c.open_channel(1)
    r = c.call(1, "queue.declare", queue=q, passive=True)
    c.close(); return fmt_seq(fr) + " ; then queue has: " + fmt(r)


@case("basic.publish immediate=true (routable)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.publish(1, "", q, immediate=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.publish mandatory=true unroutable (default exchange, no such queue)")
def _(e):
    c = e.chan()
    c.publish(1, "", e.name("<Q>"), body=b"hello", mandatory=True, props={"content_type": "text/plain", "message_id": "m1"})
    fr = c.read_frames(1.0)
    hdr = [f for f in fr if isinstance(f, Frame) and f.name == "content-header"]
    body = [f for f in fr if isinstance(f, Frame) and f.name == "content-body"]
    extra = ""
    if hdr:
        extra = " + header(props=%r, size=%d) + body %r" % (hdr[0].args["properties"], hdr[0].args["body_size"], body[0].args["body"] if body else b"")
    c.close(); return fmt_seq(fr) + extra


@case("basic.publish mandatory=true unroutable to amq.direct")
def _(e):
    c = e.chan()
    c.publish(1, "amq.direct", "nokey", mandatory=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.publish mandatory=false unroutable")
def _(e):
    c = e.chan()
    c.publish(1, "amq.direct", "nokey", mandatory=False)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("confirm mode: mandatory unroutable → order of return vs ack")
def _(e):
    c = e.chan(); c.call(1, "confirm.select")
    c.publish(1, "amq.direct", "nokey", mandatory=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("confirm mode: non-mandatory unroutable")
def _(e):
    c = e.chan(); c.call(1, "confirm.select")
    c.publish(1, "amq.direct", "nokey")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("confirm mode: 3 publishes to queue → acks")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "confirm.select")
    for _i in range(3):
        c.publish(1, "", q)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.publish content body larger than frame_max (bad frame)")
def _(e):
    c = e.chan()
    c.send(1, "basic.publish", exchange="", routing_key="x")
    payload = b"y" * (c.negotiated["frame_max"] + 10)
    c.send_frame(FRAME_HEADER, 1, struct.pack(">HHQ", 60, 0, len(payload)) + encode_props({}))
    c.send_frame(FRAME_BODY, 1, payload)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.publish header class_id != 60 ")
def _(e):
    c = e.chan()
    c.send(1, "basic.publish", exchange="", routing_key="x")
    c.send_content(1, b"abc", class_id=50)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("method frame while expecting content header")
def _(e):
    c = e.chan()
    c.send(1, "basic.publish", exchange="", routing_key="x")
    c.send(1, "basic.qos", prefetch_count=1)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


# ---- basic.consume ------------------------------------------------------------
@case("basic.consume on missing queue")
def _(e):
    c = e.chan()
    r = c.call(1, "basic.consume", queue=e.name("<Q>"))
    c.close(); return fmt(r)


@case("basic.consume with empty consumer tag → server tag format")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "basic.consume", queue=q, consumer_tag="")
    tag = r.args["consumer_tag"]
    c.close(); return "basic.consume-ok tag e.g. `%s` (len %d)" % ("amq.ctag-" + "X" * (len(tag) - 9), len(tag))


@case("basic.consume duplicate consumer tag on same channel")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "basic.consume", queue=q, consumer_tag="dup")
    r = c.call(1, "basic.consume", queue=q, consumer_tag="dup")
    c.close(); return fmt(r)


@case("basic.consume same tag on a different channel (ok?)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "basic.consume", queue=q, consumer_tag="dup")
    c.open_channel(2)
    r = c.call(2, "basic.consume", queue=q, consumer_tag="dup")
    c.close(); return fmt(r)


@case("basic.consume exclusive=true on queue that has a consumer")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    r = c.call(1, "basic.consume", queue=q, consumer_tag="c2", exclusive=True)
    c.close(); return fmt(r)


@case("basic.consume on queue with an exclusive consumer")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1", exclusive=True)
    r = c.call(1, "basic.consume", queue=q, consumer_tag="c2")
    c.close(); return fmt(r)


@case("basic.consume (other connection) on queue with an exclusive consumer")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1", exclusive=True)
    d = e.chan()
    r = d.call(1, "basic.consume", queue=q, consumer_tag="c2")
    d.close(); c.close(); e.cleanup_q(q); return fmt(r)


@case("basic.cancel unknown consumer tag")
def _(e):
    c = e.chan()
    r = c.call(1, "basic.cancel", consumer_tag="nope")
    c.close(); return fmt(r) + (" (tag echoed: `%s`)" % r.args["consumer_tag"] if getattr(r, "name", "") == "basic.cancel-ok" else "")


@case("queue deleted under a consumer (consumer_cancel_notify)")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    d = e.chan(); d.call(1, "queue.delete", queue=q); d.close()
    fr = c.read_frames(1.0)
    c.close()
    return fmt_seq(fr) + (" (args %r)" % fr[0].args if fr and isinstance(fr[0], Frame) else "")


# ---- acks ------------------------------------------------------------------------
def _with_msg(e, n=1):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    for i in range(n):
        c.publish(1, "", q, body=b"m%d" % i)
    return c, q


@case("basic.ack unknown delivery tag (no deliveries)")
def _(e):
    c = e.chan()
    c.send(1, "basic.ack", delivery_tag=42)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.ack double ack of same tag")
def _(e):
    c, q = _with_msg(e)
    r = c.call(1, "basic.get", queue=q)
    c.send(1, "basic.ack", delivery_tag=r.args["delivery_tag"])
    c.send(1, "basic.ack", delivery_tag=r.args["delivery_tag"])
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.ack delivery_tag=0 multiple=true (2 outstanding)")
def _(e):
    c, q = _with_msg(e, 2)
    c.call(1, "basic.get", queue=q); c.call(1, "basic.get", queue=q)
    c.send(1, "basic.ack", delivery_tag=0, multiple=True)
    fr = c.read_frames(1.0)
    r = c.call(1, "queue.declare", queue=q, passive=True)
    c.close(); return (fmt_seq(fr) if fr else "ok (silent)") + " ; afterwards: " + fmt(r)


@case("basic.ack delivery_tag=0 multiple=true (nothing outstanding)")
def _(e):
    c = e.chan()
    c.send(1, "basic.ack", delivery_tag=0, multiple=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr) if fr else "ok (silent)"


@case("basic.ack delivery_tag=0 multiple=false")
def _(e):
    c, q = _with_msg(e, 1)
    c.call(1, "basic.get", queue=q)
    c.send(1, "basic.ack", delivery_tag=0, multiple=False)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr) if fr else "ok (silent)"


@case("basic.ack of a tag received with no_ack=true")
def _(e):
    c, q = _with_msg(e, 1)
    r = c.call(1, "basic.get", queue=q, no_ack=True)
    c.send(1, "basic.ack", delivery_tag=r.args["delivery_tag"])
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.nack unknown tag")
def _(e):
    c = e.chan()
    c.send(1, "basic.nack", delivery_tag=7, requeue=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.reject unknown tag")
def _(e):
    c = e.chan()
    c.send(1, "basic.reject", delivery_tag=7, requeue=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.ack unknown multiple=true (tag 99 > outstanding 1)")
def _(e):
    c, q = _with_msg(e, 1)
    c.call(1, "basic.get", queue=q)
    c.send(1, "basic.ack", delivery_tag=99, multiple=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.recover requeue=false (1 unacked msg)")
def _(e):
    c, q = _with_msg(e, 1)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    c.wait(1, "basic.deliver")
    c.send(1, "basic.recover", requeue=False)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.recover requeue=true (1 unacked msg)")
def _(e):
    c, q = _with_msg(e, 1)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    c.wait(1, "basic.deliver")
    c.send(1, "basic.recover", requeue=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.recover-async requeue=false")
def _(e):
    c, q = _with_msg(e, 1)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    c.wait(1, "basic.deliver")
    c.send(1, "basic.recover-async", requeue=False)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("basic.recover-async requeue=true")
def _(e):
    c, q = _with_msg(e, 1)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    c.wait(1, "basic.deliver")
    c.send(1, "basic.recover-async", requeue=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr) if fr else "no reply"


# ---- flow / qos ---------------------------------------------------------------
@case("channel.flow active=false")
def _(e):
    c = e.chan()
    r = c.call(1, "channel.flow", active=False)
    c.close(); return fmt(r)


@case("channel.flow active=true")
def _(e):
    c = e.chan()
    r = c.call(1, "channel.flow", active=True)
    c.close(); return fmt(r) + (" (active=%s)" % r.args["active"] if getattr(r, "name", "") == "channel.flow-ok" else "")


@case("basic.qos prefetch_size=1000")
def _(e):
    c = e.chan()
    r = c.call(1, "basic.qos", prefetch_size=1000, prefetch_count=10)
    c.close(); return fmt(r)


@case("basic.qos prefetch_count=10 global=true")
def _(e):
    c = e.chan()
    r = c.call(1, "basic.qos", prefetch_count=10, **{"global": True})
    c.close(); return fmt(r)


@case("prefetch_count=2 global=false: deliveries to one consumer with 5 msgs")
def _(e):
    c, q = _with_msg(e, 5)
    c.call(1, "basic.qos", prefetch_count=2)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    fr = c.read_frames(0.7)
    c.close(); return "%d deliveries" % len([f for f in fr if isinstance(f, Frame) and f.name == "basic.deliver"])


@case("qos global=false count=2 then global=true count=3: two consumers, 10 msgs")
def _(e):
    c, q = _with_msg(e, 10)
    c.call(1, "basic.qos", prefetch_count=2)
    c.call(1, "basic.qos", prefetch_count=3, **{"global": True})
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    c.call(1, "basic.consume", queue=q, consumer_tag="c2")
    fr = c.read_frames(0.7)
    ds = [f.args["consumer_tag"] for f in fr if isinstance(f, Frame) and f.name == "basic.deliver"]
    c.close(); return "%d deliveries total (c1=%d, c2=%d)" % (len(ds), ds.count("c1"), ds.count("c2"))


@case("qos global=false count=2 only: two consumers, 10 msgs")
def _(e):
    c, q = _with_msg(e, 10)
    c.call(1, "basic.qos", prefetch_count=2)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    c.call(1, "basic.consume", queue=q, consumer_tag="c2")
    fr = c.read_frames(0.7)
    ds = [f.args["consumer_tag"] for f in fr if isinstance(f, Frame) and f.name == "basic.deliver"]
    c.close(); return "%d deliveries total (c1=%d, c2=%d)" % (len(ds), ds.count("c1"), ds.count("c2"))


@case("qos global=true count=3 only: two consumers, 10 msgs")
def _(e):
    c, q = _with_msg(e, 10)
    c.call(1, "basic.qos", prefetch_count=3, **{"global": True})
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    c.call(1, "basic.consume", queue=q, consumer_tag="c2")
    fr = c.read_frames(0.7)
    ds = [f.args["consumer_tag"] for f in fr if isinstance(f, Frame) and f.name == "basic.deliver"]
    c.close(); return "%d deliveries total (c1=%d, c2=%d)" % (len(ds), ds.count("c1"), ds.count("c2"))


@case("qos count=1 global=false set AFTER consume (existing consumer), 5 msgs")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    c.call(1, "basic.consume", queue=q, consumer_tag="c1")
    c.call(1, "basic.qos", prefetch_count=1)
    for _i in range(5):
        c.publish(1, "", q)
    fr = c.read_frames(0.7)
    c.close(); return "%d deliveries" % len([f for f in fr if isinstance(f, Frame) and f.name == "basic.deliver"])


@case("basic.get on missing queue")
def _(e):
    c = e.chan()
    r = c.call(1, "basic.get", queue=e.name("<Q>"))
    c.close(); return fmt(r)


@case("basic.get on empty queue")
def _(e):
    c = e.chan(); q = e.name("<Q>")
    c.call(1, "queue.declare", queue=q, exclusive=True)
    r = c.call(1, "basic.get", queue=q)
    c.close(); return fmt(r) + " (reserved_1=`%s`)" % r.args.get("reserved_1")


@case("basic.nack requeue=true then basic.get → redelivered flag; get-ok message_count")
def _(e):
    c, q = _with_msg(e, 2)
    r1 = c.call(1, "basic.get", queue=q)
    mc = r1.args["message_count"]
    c.send(1, "basic.nack", delivery_tag=r1.args["delivery_tag"], requeue=True)
    r2 = c.call(1, "basic.get", queue=q)
    c.close(); return "first get-ok(body=%r) message_count=%d; after nack requeue: %s body=%r" % (r1.content[1], mc, fmt(r2), r2.content[1])


@case("prefetch does not limit basic.get (count=1, 3 gets without ack)")
def _(e):
    c, q = _with_msg(e, 3)
    c.call(1, "basic.qos", prefetch_count=1)
    rs = [c.call(1, "basic.get", queue=q) for _i in range(3)]
    c.close(); return ", ".join(fmt(r) for r in rs)


# ---- tx / confirm -------------------------------------------------------------
@case("tx.commit without tx.select")
def _(e):
    c = e.chan()
    r = c.call(1, "tx.commit")
    c.close(); return fmt(r)


@case("tx.rollback without tx.select")
def _(e):
    c = e.chan()
    r = c.call(1, "tx.rollback")
    c.close(); return fmt(r)


@case("confirm.select on a tx channel")
def _(e):
    c = e.chan()
    c.call(1, "tx.select")
    r = c.call(1, "confirm.select")
    c.close(); return fmt(r)


@case("tx.select on a confirm channel")
def _(e):
    c = e.chan()
    c.call(1, "confirm.select")
    r = c.call(1, "tx.select")
    c.close(); return fmt(r)


@case("tx.select twice")
def _(e):
    c = e.chan()
    c.call(1, "tx.select")
    r = c.call(1, "tx.select")
    c.close(); return fmt(r)


@case("confirm.select twice")
def _(e):
    c = e.chan()
    c.call(1, "confirm.select")
    r = c.call(1, "confirm.select")
    c.close(); return fmt(r)


@case("tx: publish mandatory unroutable then commit → return before commit-ok?")
def _(e):
    c = e.chan(); c.call(1, "tx.select")
    c.publish(1, "amq.direct", "nokey", mandatory=True)
    fr1 = c.read_frames(0.5)
    c.send(1, "tx.commit")
    fr2 = c.read_frames(0.7)
    c.close(); return "before commit: [%s]; after commit: %s" % (fmt_seq(fr1) if fr1 else "nothing", fmt_seq(fr2))


# ---- channels -----------------------------------------------------------------
@case("queue.declare on never-opened channel 5")
def _(e):
    c = e.conn()
    c.send(5, "queue.declare", queue="", exclusive=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("channel.open on already open channel")
def _(e):
    c = e.chan()
    c.send(1, "channel.open")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("channel.open on channel > negotiated channel_max (tune-ok 10, open 11)")
def _(e):
    c = e.conn(tune={"channel_max": 10})
    c.send(11, "channel.open")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("channel.open on channel = negotiated channel_max (10)")
def _(e):
    c = e.conn(tune={"channel_max": 10})
    c.send(10, "channel.open")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("open 11 channels with negotiated channel_max=10 (count limit)")
def _(e):
    c = e.conn(tune={"channel_max": 10})
    res = []
    for ch in range(1, 12):
        r = c.open_channel(ch)
        if getattr(r, "name", "") != "channel.open-ok":
            res.append("channel #%d: %s" % (ch, fmt(r)))
            break
    else:
        res.append("all 11 opened")
    c.close(); return "; ".join(res)


@case("channel.open on channel 0")
def _(e):
    c = e.conn()
    c.send(0, "channel.open")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("method on channel after it was closed by server (before close-ok)")
def _(e):
    c = e.chan()
    c.send(1, "queue.declare", queue=e.name("<Q>"), passive=True)
    # do not auto close-ok: read raw
    f = c.read_frame(2)
    c.send(1, "queue.declare", queue="", exclusive=True)  # should be ignored
    time.sleep(0.3)
    c.send(1, "channel.close-ok")
    fr = c.read_frames(0.7)
    c.close(); return fmt(f) + " ; further methods before close-ok: " + (fmt_seq(fr) if fr else "ignored (no reply)")


@case("channel.close by client then channel reuse")
def _(e):
    c = e.chan()
    r1 = c.call(1, "channel.close", reply_code=200, reply_text="ok")
    r2 = c.open_channel(1)
    c.close(); return fmt(r1) + " → " + fmt(r2)


@case("connection-class method on channel 1 (connection.open)")
def _(e):
    c = e.chan()
    c.send(1, "connection.open", virtual_host="/")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("channel-class method on channel 0 (queue.declare on ch 0)")
def _(e):
    c = e.conn()
    c.send(0, "queue.declare", queue="", exclusive=True)
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("unknown method (class 60 method 999)")
def _(e):
    c = e.chan()
    c.send_frame(FRAME_METHOD, 1, struct.pack(">HH", 60, 999))
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("unknown class (class 999 method 10)")
def _(e):
    c = e.chan()
    c.send_frame(FRAME_METHOD, 1, struct.pack(">HH", 999, 10))
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("unknown frame type 7")
def _(e):
    c = e.chan()
    c.send_frame(7, 1, b"abc")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("bad frame-end octet")
def _(e):
    c = e.chan()
    c.send_raw(struct.pack(">BHI", 1, 1, 4) + struct.pack(">HH", 60, 10) + b"\x00")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("heartbeat frame on channel 1")
def _(e):
    c = e.chan()
    c.send_frame(FRAME_HEARTBEAT, 1, b"")
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


@case("frame larger than negotiated frame_max (method frame)")
def _(e):
    c = e.conn(tune={"frame_max": 4096})
    c.open_channel(1)
    c.send(1, "queue.declare", queue="", exclusive=True, arguments={"x-pad": "p" * 5000})
    fr = c.read_frames(1.0)
    c.close(); return fmt_seq(fr)


# ---- connection tune / handshake ----------------------------------------------
def _tune_case(e, tune):
    c = Conn(e.a.host, e.a.port, timeout=8)
    t0 = time.time()
    r = c.handshake(e.a.user, e.a.password, e.a.vhost, tune=tune)
    fr = [r]
    if getattr(r, "name", "") != "connection.open-ok":
        fr = [r if r is not None else "no reply within 6s"]
        if r is not None:
            fr[-1] = fmt(r) + " after %.1fs" % (time.time() - t0)
    if getattr(r, "name", "") == "connection.open-ok":
        r2 = c.open_channel(1)
        fr.append(r2)
    c.close()
    return fmt_seq(fr)


@case("connection.tune values offered by server")
def _(e):
    c = Conn(e.a.host, e.a.port)
    c.handshake(e.a.user, e.a.password, e.a.vhost, open_vhost=False)
    t = c.tune
    s = c.start.args
    c.sock.close()
    caps = s["server_properties"].get("capabilities", {})
    return ("tune channel_max=%d frame_max=%d heartbeat=%d; start version %d-%d mechanisms=`%s` locales=`%s`; server capabilities=%s"
            % (t["channel_max"], t["frame_max"], t["heartbeat"], s["version_major"], s["version_minor"],
               s["mechanisms"].decode(), s["locales"].decode(), ",".join("%s=%s" % kv for kv in sorted(caps.items()))))


@case("tune-ok frame_max > server's (server+1)")
def _(e):
    return _tune_case(e, {"frame_max": 131072 + 1})


@case("tune-ok frame_max = 1000000")
def _(e):
    return _tune_case(e, {"frame_max": 1000000})


@case("tune-ok frame_max = 0 (unlimited)")
def _(e):
    return _tune_case(e, {"frame_max": 0})


@case("tune-ok frame_max = 4095 (< 4096 minimum)")
def _(e):
    return _tune_case(e, {"frame_max": 4095})


@case("tune-ok channel_max > server's (server+1)")
def _(e):
    return _tune_case(e, {"channel_max": 2047 + 1})


@case("tune-ok channel_max = 0 (unlimited)")
def _(e):
    return _tune_case(e, {"channel_max": 0})


@case("tune-ok channel_max = 65535")
def _(e):
    return _tune_case(e, {"channel_max": 65535})


@case("tune-ok heartbeat = 1 (lower than server's 60)")
def _(e):
    return _tune_case(e, {"heartbeat": 1})


@case("connection.open to unknown vhost")
def _(e):
    c = Conn(e.a.host, e.a.port)
    r = c.handshake(e.a.user, e.a.password, "/no-such-vhost")
    c.sock.close(); return fmt(r)


def _header_case(e, hdr):
    c = Conn(e.a.host, e.a.port)
    c.send_raw(hdr)
    data, how = c.read_bytes_raw(2.0)
    c.sock.close()
    return "replies %r then %s" % (data, "closes socket" if how in ("eof", "reset") else "keeps socket open (timeout 2s)")


@case("protocol header `AMQP\\x00\\x00\\x09\\x02`")
def _(e):
    return _header_case(e, b"AMQP\x00\x00\x09\x02")


@case("protocol header `AMQP\\x01\\x01\\x00\\x09` (0-9 style)")
def _(e):
    return _header_case(e, b"AMQP\x01\x01\x00\x09")


@case("protocol header `AMQP\\x00\\x00\\x08\\x00` (0-8)")
def _(e):
    return _header_case(e, b"AMQP\x00\x00\x08\x00")


@case("protocol header `AMQP\\x03\\x01\\x00\\x00` (AMQP 1.0 SASL)")
def _(e):
    return _header_case(e, b"AMQP\x03\x01\x00\x00")


@case("protocol header `HTTP/1.1` (GET / HTTP/1.1)")
def _(e):
    return _header_case(e, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


@case("protocol header `HTTP/1.1` (8 bytes only)")
def _(e):
    return _header_case(e, b"HTTP/1.1")


@case("no protocol header, client sends nothing (wait 3s)")
def _(e):
    c = Conn(e.a.host, e.a.port)
    data, how = c.read_bytes_raw(3.0)
    c.sock.close()
    return "replies %r then %s" % (data, how)


@case("start-ok with unknown mechanism `FOO`")
def _(e):
    c = Conn(e.a.host, e.a.port)
    c.send_raw(b"AMQP\x00\x00\x09\x01")
    c.read_frame(5)
    t0 = time.time()
    c.send(0, "connection.start-ok", client_properties={}, mechanism="FOO", response=b"x", locale="en_US")
    fr = c.read_frames(6.0)
    fr.append("after %.1fs" % (time.time() - t0 - 6.0 if fr and fr[0] != "EOF" else time.time() - t0))
    c.sock.close(); return fmt_seq(fr)


@case("start-ok with AMQPLAIN mechanism (guest/guest)")
def _(e):
    c = Conn(e.a.host, e.a.port)
    c.send_raw(b"AMQP\x00\x00\x09\x01")
    c.read_frame(5)
    resp = enc_table({"LOGIN": e.a.user, "PASSWORD": e.a.password})[4:]
    c.send(0, "connection.start-ok", client_properties={}, mechanism="AMQPLAIN", response=resp, locale="en_US")
    fr = c.read_frames(1.0)
    c.sock.close(); return fmt_seq(fr)


@case("wrong password WITH authentication_failure_close capability")
def _(e):
    c = Conn(e.a.host, e.a.port)
    t0 = time.time()
    r = c.handshake(e.a.user, "wrong", e.a.vhost, capabilities={"authentication_failure_close": True})
    fr = [fmt(r) + " after %.1fs" % (time.time() - t0)] + c.read_frames(1.0)
    c.sock.close(); return fmt_seq(fr)


@case("wrong password WITHOUT authentication_failure_close capability")
def _(e):
    c = Conn(e.a.host, e.a.port)
    t0 = time.time()
    r = c.handshake(e.a.user, "wrong", e.a.vhost, capabilities={})
    fr = [fmt(r) + " after %.1fs" % (time.time() - t0)]
    c.sock.close(); return fmt_seq(fr)


@case("unknown user WITH authentication_failure_close capability")
def _(e):
    c = Conn(e.a.host, e.a.port)
    r = c.handshake("nosuchuser", "x", e.a.vhost, capabilities={"authentication_failure_close": True})
    fr = [r] + c.read_frames(1.0)
    c.sock.close(); return fmt_seq(fr)


@case("connection.close from client → close-ok")
def _(e):
    c = e.conn()
    r = c.call(0, "connection.close", reply_code=200, reply_text="bye")
    c.sock.close(); return fmt(r)


# ---- closing with frames in flight (issue 10) ---------------------------------
def _end_of_stream(c, timeout=5.0):
    """Reads to the end: 'EOF' (clean FIN) or 'RESET', with the frames seen."""
    frames = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            f = c.read_frame(max(0.1, deadline - time.time()))
        except Closed:
            return frames, "EOF"
        except ConnectionResetError:
            return frames, "RESET"
        except socket.timeout:
            return frames, "still open after %.0fs" % timeout
        if f.name != "heartbeat":
            frames.append(f)
    return frames, "still open after %.0fs" % timeout


def encode_method(name, **kw):
    (cid, mid), fields = BY_NAME[name]
    return struct.pack(">HH", cid, mid) + encode_args(fields, kw)


def _publishes(c, n, size):
    out = b""
    for _ in range(n):
        out += c.frame_bytes(FRAME_METHOD, 1, encode_method("basic.publish", exchange="", routing_key="nowhere"))
        out += c.frame_bytes(FRAME_HEADER, 1, struct.pack(">HHQ", 60, 0, size) + encode_props({}))
        out += c.frame_bytes(FRAME_BODY, 1, b"x" * size)
    return out


def _background(c, data):
    import threading
    err = []
    w = socket.socket(fileno=os.dup(c.sock.fileno()))
    w.settimeout(30)

    def run():
        try:
            w.sendall(data)
        except OSError as ex:
            err.append(type(ex).__name__)
        finally:
            w.detach() and None
    t = threading.Thread(target=run)
    t.start()
    return t, err


@case("connection.close with 4 MiB of publishes pipelined behind it")
def _(e):
    c = e.chan()
    data = c.frame_bytes(FRAME_METHOD, 0, encode_method("connection.close", reply_code=200, reply_text="bye")) + _publishes(c, 4096, 1024)
    t, err = _background(c, data)
    frames, end = _end_of_stream(c)
    t.join(10)
    c.sock.close()
    return "%s; then %s; client's writes: %s" % (fmt_seq(frames), end, "error " + err[0] if err else "all accepted")


@case("connection.close twice in one write")
def _(e):
    c = e.chan()
    data = c.frame_bytes(FRAME_METHOD, 0, encode_method("connection.close", reply_code=200, reply_text="bye")) * 2
    c.send_raw(data)
    frames, end = _end_of_stream(c)
    c.sock.close()
    return "%s; then %s" % (fmt_seq(frames), end)


@case("channel error (passive declare of a missing queue) and connection.close in one write")
def _(e):
    c = e.chan()
    data = c.frame_bytes(FRAME_METHOD, 1, encode_method("queue.declare", queue=e.name("<Q>"), passive=True))
    data += c.frame_bytes(FRAME_METHOD, 0, encode_method("connection.close", reply_code=200, reply_text="bye"))
    c.send_raw(data)
    frames, end = _end_of_stream(c)
    c.sock.close()
    return "%s; then %s" % (fmt_seq(frames), end)


@case("server closes the connection (504), client answers close-ok: how the socket ends")
def _(e):
    c = e.chan()
    c.send(7, "basic.qos", prefetch_size=0, prefetch_count=1, **{"global": False})
    f = c.wait(0, "connection.close", timeout=3)
    c.send(0, "connection.close-ok")
    t0 = time.time()
    frames, end = _end_of_stream(c)
    c.sock.close()
    return "%s; after close-ok: %s%s within %.1fs" % (fmt(f), fmt_seq(frames) + "; " if frames else "", end, time.time() - t0)


@case("channel.open on channel 65535 (channel_max 2047)")
def _(e):
    c = e.conn()
    r = c.open_channel(65535)
    c.close(); return fmt(r)


@case("8 logins with a wrong password, then the right one")
def _(e):
    outcomes = []
    for _ in range(8):
        c = Conn(e.a.host, e.a.port)
        r = c.handshake(e.a.user, "wrong-password", e.a.vhost, capabilities={"authentication_failure_close": True})
        outcomes.append(fmt(r))
        c.sock.close()
    c = Conn(e.a.host, e.a.port)
    r = c.handshake(e.a.user, e.a.password, e.a.vhost)
    c.close()
    return "wrong: %s (x%d); right: %s" % (outcomes[-1], len(outcomes), fmt(r))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--user", default="guest")
    ap.add_argument("--password", default="guest")
    ap.add_argument("--vhost", default="/")
    ap.add_argument("--only", default=None, help="run only cases whose title contains this")
    a = ap.parse_args()
    e = Env(a)
    print("| # | case | broker reply |")
    print("|---|------|--------------|")
    for i, (title, fn) in enumerate(CASES, 1):
        if a.only and a.only.lower() not in title.lower():
            continue
        try:
            res = fn(e)
        except Exception as ex:  # keep going
            res = "PROBE ERROR: %s: %s" % (type(ex).__name__, ex)
        res = norm(str(res)).replace("|", "\\|").replace("\n", " ")
        print("| %d | %s | %s |" % (i, title.replace("|", "\\|"), res))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
