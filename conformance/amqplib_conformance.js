#!/usr/bin/env node
// AMQP 0-9-1 client-visible conformance checks using amqplib (promise API).
//
// Runs against the broker at $AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
// prints one "PASS name" / "FAIL name: reason" line per check and finishes with
// "N passed, M failed".  Exit status is non-zero if any check failed.
//
// Expectations are what RabbitMQ 3.x does (see RABBITMQ_BEHAVIOUR.md).
'use strict';

const amqp = require('amqplib');
const URL_ = globalThis.URL;
const crypto = require('node:crypto');

const URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/';
const RUN = crypto.randomBytes(4).toString('hex');
const results = [];
const createdQueues = new Set();
const createdExchanges = new Set();

let seq = 0;
const name = (kind) => `conf-js-${RUN}-${kind}-${++seq}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class AssertionError extends Error {}

function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new AssertionError(`${what}: expected ${e}, got ${a}`);
}

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new AssertionError(`timeout waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

// A connection per check; channel errors are captured instead of crashing.
class Ctx {
  async open() {
    this.conn = await amqp.connect(URL);
    this.conn.on('error', () => {});
    this.channelErrors = [];
    this.ch = await this.channel();
    return this;
  }

  async channel(confirm = false) {
    const ch = confirm ? await this.conn.createConfirmChannel() : await this.conn.createChannel();
    ch.on('error', (e) => this.channelErrors.push(e));
    return ch;
  }

  async exchange(type, opts = {}) {
    const x = name('x');
    await this.ch.assertExchange(x, type, { durable: false, ...opts });
    createdExchanges.add(x);
    return x;
  }

  async queue(opts = {}, qname) {
    const r = await this.ch.assertQueue(qname === undefined ? name('q') : qname, { durable: false, ...opts });
    createdQueues.add(r.queue);
    return r.queue;
  }

  async close() {
    try {
      await this.conn.close();
    } catch (_) {}
  }
}

// Expect the promise to be rejected by a channel close with the given code,
// reply-text prefix and (optionally) class/method id of the offending method.
async function expectClose(promise, code, textPrefix, classId, methodId) {
  try {
    await promise;
  } catch (e) {
    if (e instanceof AssertionError) throw e;
    const m = /with message "(.*)"$/s.exec(e.message || '');
    const text = m ? m[1] : e.message;
    if (e.code !== code) throw new AssertionError(`expected code ${code}, got ${e.code} (${e.message})`);
    if (!text.startsWith(textPrefix)) throw new AssertionError(`expected text starting ${JSON.stringify(textPrefix)}, got ${JSON.stringify(text)}`);
    if (classId !== undefined) eq([e.classId, e.methodId], [classId, methodId], 'class/method id');
    return e;
  }
  throw new AssertionError(`expected channel close ${code}, but the operation succeeded`);
}

async function drain(ch, q) {
  const out = [];
  for (;;) {
    const m = await ch.get(q, { noAck: true });
    if (m === false) return out;
    out.push(m.content.toString());
  }
}

async function getOne(ch, q, opts = { noAck: true }) {
  for (let i = 0; i < 40; i++) {
    const m = await ch.get(q, opts);
    if (m !== false) return m;
    await sleep(25);
  }
  throw new AssertionError(`no message in ${q}`);
}

async function publishConfirmed(ch, ex, rk, body, opts = {}) {
  return new Promise((resolve, reject) => {
    ch.publish(ex, rk, Buffer.from(body), opts, (err) => (err ? reject(new AssertionError(`nacked: ${err}`)) : resolve()));
  });
}

const checks = [];
const check = (label, fn) => checks.push([label, fn]);

// ---------------------------------------------------------------------------
// Declarations
// ---------------------------------------------------------------------------
for (const type of ['direct', 'fanout', 'topic', 'headers']) {
  check(`exchange_declare_${type}`, async (c) => {
    const x = await c.exchange(type);
    await c.ch.checkExchange(x);
    await c.ch.assertExchange(x, type, { durable: false }); // equivalent redeclare
  });
}

check('queue_declare_named_ok_fields', async (c) => {
  const q = name('q');
  const r = await c.ch.assertQueue(q, { durable: false });
  createdQueues.add(q);
  eq(r, { queue: q, messageCount: 0, consumerCount: 0 }, 'declare-ok');
});

check('queue_declare_server_named', async (c) => {
  const r = await c.ch.assertQueue('', { exclusive: true });
  if (!/^amq\.gen-[A-Za-z0-9_-]{22}$/.test(r.queue)) throw new AssertionError(`bad server-named queue ${r.queue}`);
  await c.ch.checkQueue(r.queue);
});

check('queue_purge_delete_counts', async (c) => {
  const q = await c.queue();
  const cc = await c.channel(true);
  for (let i = 0; i < 3; i++) await publishConfirmed(cc, '', q, 'x');
  eq((await c.ch.purgeQueue(q)).messageCount, 3, 'purge-ok messageCount');
  await publishConfirmed(cc, '', q, 'x');
  eq((await c.ch.deleteQueue(q)).messageCount, 1, 'delete-ok messageCount');
  createdQueues.delete(q);
});

check('delete_missing_queue_and_exchange_ok', async (c) => {
  eq((await c.ch.deleteQueue(name('missing'))).messageCount, 0, 'delete-ok');
  await c.ch.deleteExchange(name('missing'));
});

// ---------------------------------------------------------------------------
// Publish / consume / ack
// ---------------------------------------------------------------------------
check('bind_publish_consume_manual_ack', async (c) => {
  const x = await c.exchange('direct');
  const q = await c.queue({ exclusive: true });
  await c.ch.bindQueue(q, x, 'rk');
  const got = [];
  let done;
  const all = new Promise((r) => (done = r));
  const ok = await c.ch.consume(
    q,
    (m) => {
      got.push(m);
      if (got.length === 3) done();
    },
    { noAck: false },
  );
  if (!/^amq\.ctag-[A-Za-z0-9_-]{22}$/.test(ok.consumerTag)) throw new AssertionError(`bad server consumer tag ${ok.consumerTag}`);
  for (let i = 0; i < 3; i++) c.ch.publish(x, 'rk', Buffer.from(`m${i}`), { contentType: 'text/plain', headers: { n: i } });
  c.ch.publish(x, 'other', Buffer.from('nope'));
  await withTimeout(all, 3000, 'deliveries');
  eq(got.map((m) => m.content.toString()), ['m0', 'm1', 'm2'], 'bodies');
  eq(got.map((m) => m.fields.deliveryTag), [1, 2, 3], 'delivery tags');
  eq(got[0].fields.exchange, x, 'exchange');
  eq(got[0].fields.routingKey, 'rk', 'routing key');
  eq(got[0].fields.consumerTag, ok.consumerTag, 'consumer tag');
  eq(got[2].properties.headers, { n: 2 }, 'headers');
  eq(got[2].properties.contentType, 'text/plain', 'content type');
  c.ch.ack(got[2], true);
  await c.ch.cancel(ok.consumerTag);
  eq((await c.ch.checkQueue(q)).messageCount, 0, 'all acked');
});

check('basic_get_and_empty', async (c) => {
  const q = await c.queue({ exclusive: true });
  eq(await c.ch.get(q), false, 'get-empty');
  const cc = await c.channel(true);
  await publishConfirmed(cc, '', q, 'one');
  await publishConfirmed(cc, '', q, 'two');
  const m = await c.ch.get(q, { noAck: false });
  eq([m.content.toString(), m.fields.messageCount, m.fields.redelivered, m.fields.deliveryTag], ['one', 1, false, 1], 'get-ok');
  c.ch.ack(m);
  const m2 = await c.ch.get(q, { noAck: true });
  eq([m2.content.toString(), m2.fields.messageCount], ['two', 0], 'second get-ok');
});

check('nack_requeue_sets_redelivered', async (c) => {
  const q = await c.queue({ exclusive: true });
  const cc = await c.channel(true);
  await publishConfirmed(cc, '', q, 'm0');
  await publishConfirmed(cc, '', q, 'm1');
  const m = await c.ch.get(q, { noAck: false });
  eq([m.content.toString(), m.fields.redelivered], ['m0', false], 'first');
  c.ch.nack(m, false, true);
  const r = await getOne(c.ch, q, { noAck: false });
  eq([r.content.toString(), r.fields.redelivered], ['m0', true], 'requeued at head, redelivered');
  c.ch.reject(r, false);
  const n = await getOne(c.ch, q);
  eq([n.content.toString(), n.fields.redelivered], ['m1', false], 'rejected message dropped');
});

check('topic_routing_star_hash', async (c) => {
  const x = await c.exchange('topic');
  const pats = { 'a.*.c': null, 'a.#': null, 'a.#.c': null, '#': null, '*': null, '*.b.#': null };
  for (const p of Object.keys(pats)) {
    pats[p] = await c.queue({ exclusive: true });
    await c.ch.bindQueue(pats[p], x, p);
  }
  const cc = await c.channel(true);
  const keys = ['a.b.c', 'a.c', 'a', 'a.b.b.c', 'a.b', 'x.b.c', 'b', 'a.b.c.d', 'x.b'];
  for (const k of keys) await publishConfirmed(cc, x, k, k);
  const expected = {
    'a.*.c': ['a.b.c'],
    'a.#': ['a.b.c', 'a.c', 'a', 'a.b.b.c', 'a.b', 'a.b.c.d'],
    'a.#.c': ['a.b.c', 'a.c', 'a.b.b.c'],
    '#': keys,
    '*': ['a', 'b'],
    '*.b.#': ['a.b.c', 'a.b.b.c', 'a.b', 'x.b.c', 'a.b.c.d', 'x.b'],
  };
  for (const [p, exp] of Object.entries(expected)) eq(await drain(c.ch, pats[p]), exp, `pattern ${p}`);
});

check('topic_hash_matches_zero_words', async (c) => {
  const x = await c.exchange('topic');
  const q = await c.queue({ exclusive: true });
  await c.ch.bindQueue(q, x, 'logs.#');
  await c.ch.bindQueue(q, x, '#.end');
  const cc = await c.channel(true);
  for (const k of ['logs', 'logs.a.b', 'logsx', 'end', 'x.end', 'xend']) await publishConfirmed(cc, x, k, k);
  eq(await drain(c.ch, q), ['logs', 'logs.a.b', 'end', 'x.end'], 'zero-word # matches');
});

check('fanout_to_several_queues', async (c) => {
  const x = await c.exchange('fanout');
  const qs = [];
  for (let i = 0; i < 3; i++) {
    const q = await c.queue({ exclusive: true });
    await c.ch.bindQueue(q, x, `ignored${i}`);
    qs.push(q);
  }
  const cc = await c.channel(true);
  await publishConfirmed(cc, x, 'whatever', 'fan');
  for (const q of qs) eq((await getOne(c.ch, q)).content.toString(), 'fan', `queue ${q}`);
});

check('headers_exchange_all_any', async (c) => {
  const x = await c.exchange('headers');
  const qAll = await c.queue({ exclusive: true });
  const qAny = await c.queue({ exclusive: true });
  await c.ch.bindQueue(qAll, x, '', { 'x-match': 'all', format: 'pdf', type: 'report' });
  await c.ch.bindQueue(qAny, x, '', { 'x-match': 'any', format: 'pdf', type: 'report' });
  const cc = await c.channel(true);
  await publishConfirmed(cc, x, '', 'both', { headers: { format: 'pdf', type: 'report', extra: 1 } });
  await publishConfirmed(cc, x, '', 'one', { headers: { format: 'pdf' } });
  await publishConfirmed(cc, x, '', 'none', { headers: { format: 'zip' } });
  eq(await drain(c.ch, qAll), ['both'], 'x-match all');
  eq(await drain(c.ch, qAny), ['both', 'one'], 'x-match any');
});

check('prefetch_limit_honoured', async (c) => {
  const q = await c.queue({ exclusive: true });
  const cc = await c.channel(true);
  for (let i = 0; i < 10; i++) await publishConfirmed(cc, '', q, `p${i}`);
  await c.ch.prefetch(3);
  const got = [];
  await c.ch.consume(q, (m) => got.push(m), { noAck: false });
  await sleep(400);
  eq(got.length, 3, 'deliveries with prefetch 3');
  c.ch.ack(got[0]);
  await sleep(300);
  eq(got.length, 4, 'after one ack');
});

// ---------------------------------------------------------------------------
// Publisher confirms / returns
// ---------------------------------------------------------------------------
check('confirm_channel_every_publish_acked', async (c) => {
  const q = await c.queue({ exclusive: true });
  const cc = await c.channel(true);
  let acked = 0;
  const n = 100;
  const ps = [];
  for (let i = 0; i < n; i++) {
    ps.push(
      new Promise((res, rej) =>
        cc.publish('', q, Buffer.from(`c${i}`), {}, (err) => {
          if (err) rej(err);
          else {
            acked++;
            res();
          }
        }),
      ),
    );
  }
  await withTimeout(Promise.all(ps), 5000, 'confirms');
  await cc.waitForConfirms();
  eq(acked, n, 'acked count');
  eq((await c.ch.checkQueue(q)).messageCount, n, 'messages in queue');
});

check('confirm_unroutable_acked', async (c) => {
  const cc = await c.channel(true);
  await withTimeout(publishConfirmed(cc, 'amq.direct', name('nokey'), 'x'), 3000, 'ack for unroutable publish');
});

check('mandatory_unroutable_returned_before_ack', async (c) => {
  const cc = await c.channel(true);
  const events = [];
  cc.on('return', (m) => events.push(['return', m]));
  const rk = name('nokey');
  await withTimeout(
    new Promise((res, rej) =>
      cc.publish('amq.direct', rk, Buffer.from('ret'), { mandatory: true, messageId: 'r1' }, (err) => {
        events.push(['ack', err]);
        err ? rej(err) : res();
      }),
    ),
    3000,
    'confirm',
  );
  eq(events.map((e) => e[0]), ['return', 'ack'], 'event order');
  const m = events[0][1];
  eq([m.fields.replyCode, m.fields.replyText, m.fields.exchange, m.fields.routingKey], [312, 'NO_ROUTE', 'amq.direct', rk], 'basic.return fields');
  eq([m.content.toString(), m.properties.messageId], ['ret', 'r1'], 'returned content');
});

// ---------------------------------------------------------------------------
// Error codes
// ---------------------------------------------------------------------------
check('404_check_missing_queue', async (c) => {
  const q = name('missing');
  await expectClose(c.ch.checkQueue(q), 404, `NOT_FOUND - no queue '${q}' in vhost '/'`, 50, 10);
});

check('404_check_missing_exchange', async (c) => {
  const x = name('missing');
  await expectClose(c.ch.checkExchange(x), 404, `NOT_FOUND - no exchange '${x}' in vhost '/'`, 40, 10);
});

check('404_bind_missing_exchange', async (c) => {
  const q = await c.queue({ exclusive: true });
  const x = name('missing');
  await expectClose(c.ch.bindQueue(q, x, 'k'), 404, `NOT_FOUND - no exchange '${x}' in vhost '/'`, 50, 20);
});

check('404_consume_missing_queue', async (c) => {
  const q = name('missing');
  await expectClose(c.ch.consume(q, () => {}), 404, `NOT_FOUND - no queue '${q}' in vhost '/'`, 60, 20);
});

check('404_publish_missing_exchange', async (c) => {
  const cc = await c.channel(true);
  const x = name('missing');
  const errP = withTimeout(new Promise((res) => cc.once('error', res)), 3000, 'channel error');
  cc.publish(x, 'k', Buffer.from('x'), {}, () => {});
  const e = await errP;
  eq([e.code, e.classId, e.methodId], [404, 60, 40], 'code/class/method');
  if (!e.message.includes(`NOT_FOUND - no exchange '${x}' in vhost '/'`)) throw new AssertionError(e.message);
});

check('406_inequivalent_exchange_type', async (c) => {
  const x = await c.exchange('direct');
  await expectClose(
    c.ch.assertExchange(x, 'fanout', { durable: false }),
    406,
    `PRECONDITION_FAILED - inequivalent arg 'type' for exchange '${x}' in vhost '/': received 'fanout' but current is 'direct'`,
    40,
    10,
  );
});

check('406_inequivalent_queue_durable', async (c) => {
  const q = await c.queue({ durable: false });
  await expectClose(
    c.ch.assertQueue(q, { durable: true }),
    406,
    `PRECONDITION_FAILED - inequivalent arg 'durable' for queue '${q}' in vhost '/': received 'true' but current is 'false'`,
    50,
    10,
  );
});

check('406_unknown_delivery_tag', async (c) => {
  const errP = withTimeout(new Promise((res) => c.ch.once('error', res)), 3000, 'channel error');
  c.ch.ack({ fields: { deliveryTag: 99 } });
  const e = await errP;
  eq([e.code, e.classId, e.methodId], [406, 60, 80], 'code/class/method');
  if (!e.message.includes('PRECONDITION_FAILED - unknown delivery tag 99')) throw new AssertionError(e.message);
});

check('403_amq_prefix', async (c) => {
  const x = `amq.conf-${RUN}`;
  await expectClose(c.ch.assertExchange(x, 'direct'), 403, `ACCESS_REFUSED - exchange name '${x}' contains reserved prefix 'amq.*'`, 40, 10);
  const ch2 = await c.channel();
  await expectClose(ch2.assertQueue(x), 403, `ACCESS_REFUSED - queue name '${x}' contains reserved prefix 'amq.*'`, 50, 10);
});

check('403_delete_amq_direct', async (c) => {
  await expectClose(c.ch.deleteExchange('amq.direct'), 403, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed", 40, 20);
});

check('405_exclusive_queue_other_connection', async (c) => {
  const q = await c.queue({ exclusive: true });
  const other = await new Ctx().open();
  try {
    await expectClose(other.ch.checkQueue(q), 405, `RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '${q}' in vhost '/'`, 50, 10);
    const ch2 = await other.channel();
    await expectClose(ch2.consume(q, () => {}), 405, 'RESOURCE_LOCKED', 60, 20);
  } finally {
    await other.close();
  }
  await c.ch.checkQueue(q);
});

check('403_exclusive_consumer', async (c) => {
  const q = await c.queue({ exclusive: true });
  await c.ch.consume(q, () => {}, { exclusive: true });
  await expectClose(c.ch.consume(q, () => {}), 403, `ACCESS_REFUSED - queue '${q}' in vhost '/' in exclusive use`, 60, 20);
});

check('connection_close_530_duplicate_consumer_tag', async (c) => {
  const q = await c.queue({ exclusive: true });
  const closed = new Promise((res) => c.conn.once('close', res));
  await c.ch.consume(q, () => {}, { consumerTag: 'dup' });
  c.ch.consume(q, () => {}, { consumerTag: 'dup' }).catch(() => {});
  const e = await withTimeout(closed, 3000, 'connection close');
  if (!e || e.code !== 530 || !e.message.includes("NOT_ALLOWED - attempt to reuse consumer tag 'dup'")) {
    throw new AssertionError(`unexpected close ${e && e.code} ${e && e.message}`);
  }
});

// ---- connections (issue 10: what client suites tripped over) -----------------
check('close_callback_fires_with_publishes_in_flight', async (c) => {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  const q = (await ch.assertQueue('', { exclusive: true })).queue;
  for (let i = 0; i < 2000; i++) ch.sendToQueue(q, Buffer.alloc(512));
  // Close without waiting for the publishes: amqplib resolves once close-ok
  // is read (an EPIPE/reset would reject or never resolve).
  await withTimeout(conn.close(), 5000, 'connection close');
});

check('close_right_after_a_channel_error', async (c) => {
  const conn = await amqp.connect(URL);
  conn.on('error', () => {});
  const ch = await conn.createChannel();
  ch.on('error', () => {});
  ch.checkQueue(name('missing')).catch(() => {});
  await withTimeout(conn.close(), 5000, 'connection close');
});

check('wrong_passwords_do_not_lock_out_the_right_one', async (c) => {
  const u = new URL_(URL);
  u.password = 'wrong-password';
  for (let i = 0; i < 8; i++) {
    let opened = false;
    try {
      const bad = await amqp.connect(u.toString());
      opened = true;
      await bad.close();
    } catch (e) {
      if (!/403|ACCESS_REFUSED|auth/i.test(String(e && e.message))) throw e;
    }
    if (opened) throw new AssertionError('a wrong password opened a connection');
  }
  const good = await amqp.connect(URL);
  await good.close();
});

check('localhost_reaches_the_broker', async (c) => {
  const u = new URL_(URL);
  u.hostname = 'localhost';
  const conn = await amqp.connect(u.toString());
  await conn.close();
});

async function cleanup() {
  let c;
  try {
    c = await new Ctx().open();
  } catch (_) {
    return;
  }
  for (const q of createdQueues) {
    try {
      await c.ch.deleteQueue(q);
    } catch (_) {
      c.ch = await c.channel();
    }
  }
  for (const x of createdExchanges) {
    try {
      await c.ch.deleteExchange(x);
    } catch (_) {
      c.ch = await c.channel();
    }
  }
  await c.close();
}

(async () => {
  for (const [label, fn] of checks) {
    let c;
    try {
      c = await new Ctx().open();
      await withTimeout(fn(c), 15000, label);
      results.push(true);
      console.log(`PASS ${label}`);
    } catch (e) {
      results.push(false);
      console.log(`FAIL ${label}: ${e && e.message ? e.message : e}`);
    } finally {
      if (c) await c.close();
    }
  }
  await cleanup();
  const passed = results.filter(Boolean).length;
  const failed = results.length - passed;
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();
