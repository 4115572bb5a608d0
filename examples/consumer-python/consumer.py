#!/usr/bin/env python3
"""Consumes the audit records o365-relay publishes (docs/asyncapi.yaml), with pika.

Declares its own queue, binds it to the relay's topic exchange, acknowledges each message after
processing it, and skips the duplicates that at-least-once delivery brings (de-duplication on
`message_id` within a bounded window). "Processing" here prints one JSON line per record; put
your own work in `process()`.

With `--queue-type stream` the queue is a RabbitMQ stream: messages stay after they are
acknowledged, and any consumer can read the history again from `--stream-offset` (`first`,
`last`, `next`, an offset number, or an interval back from now such as `7D`, `12h` or `30m`).

Standard error: `ready …` once consuming, `duplicate <message_id>` per skipped message, and
`stopped: N records, D duplicates` at the end. Stops on SIGTERM or Ctrl-C (exit status 0).
"""

import argparse
import collections
import json
import re
import os
import signal
import sys

import pika


class Stop(Exception):
    """Raised by the signal handler to leave the consuming loop."""


class RecentIds:
    """The last `size` message ids processed; the oldest is forgotten first. A duplicate comes
    soon after its original (a publish repeated after a lost confirm, a blob retried), so a
    window of the last ids is enough, and memory stays bounded."""

    def __init__(self, size):
        self.size = size
        self.ids = collections.OrderedDict()

    def __contains__(self, message_id):
        return message_id in self.ids

    def add(self, message_id):
        self.ids[message_id] = None
        while len(self.ids) > self.size:
            self.ids.popitem(last=False)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
                   help="RabbitMQ URL (env AMQP_URL)")
    p.add_argument("--exchange", default=os.environ.get("O365_AMQP_EXCHANGE", "o365.audit"),
                   help="the relay's exchange (env O365_AMQP_EXCHANGE; default o365.audit)")
    p.add_argument("--queue", default="o365.consumer.python", help="this consumer's queue")
    p.add_argument("--bind", action="append", metavar="KEY",
                   help="binding key, repeatable: '#' (default), 'Audit.Exchange.*', '#.<tenant id>', '<replay prefix>.#'")
    p.add_argument("--queue-type", choices=["quorum", "classic", "stream"], default="quorum")
    p.add_argument("--stream-offset", default="first",
                   help="where a stream consumer starts: first, last, next, an offset, or an interval (7D, 12h, 30m)")
    p.add_argument("--prefetch", type=int, default=100, help="unacknowledged messages at once (basic.qos)")
    p.add_argument("--dedup-window", type=int, default=100_000, help="message ids remembered for de-duplication")
    args = p.parse_args(argv)
    args.bind = args.bind or ["#"]
    return args


def stream_offset(value):
    """The `x-stream-offset` consumer argument: a name, an offset number, or an interval back
    from now that RabbitMQ reads itself (`7D`, `12h`, `30m`, `10s`)."""
    if value.isdigit():
        return int(value)
    if value in ("first", "last", "next") or re.fullmatch(r"[0-9]+[YMDhms]", value):
        return value
    raise SystemExit(f"--stream-offset {value!r}: first, last, next, an offset, or an interval like 7D or 12h")


def header(properties, name):
    value = (properties.headers or {}).get(name)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def process(method, properties, body):
    """One record: here, a line on standard output. An exception stops the consumer before the
    acknowledgement, so RabbitMQ delivers the message again (to this consumer's next run)."""
    record = json.loads(body)
    print(json.dumps({
        "message_id": properties.message_id,
        "routing_key": method.routing_key,
        "replay": header(properties, "o365-replay") == "true",
        "tenant_id": header(properties, "o365-tenant-id"),
        "operation": record.get("Operation"),
        "creation_time": record.get("CreationTime"),
    }), flush=True)


def main(argv=None):
    args = parse_args(argv)
    consume_args = {}
    if args.queue_type == "stream":
        # Where to start reading the stream: every consumer chooses its own.
        consume_args["x-stream-offset"] = stream_offset(args.stream_offset)
    seen = RecentIds(args.dedup_window)
    counts = {"records": 0, "duplicates": 0}

    def on_signal(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def on_message(ch, method, properties, body):
        message_id = properties.message_id
        if message_id and message_id in seen:
            counts["duplicates"] += 1
            print(f"duplicate {message_id}", file=sys.stderr, flush=True)
        else:
            process(method, properties, body)
            if message_id:
                seen.add(message_id)
            counts["records"] += 1
        # After processing: a crash before this line means the message comes again.
        ch.basic_ack(method.delivery_tag)

    connection = None
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
        channel = connection.channel()
        # Exactly as the relay declares it, so either may start first.
        channel.exchange_declare(args.exchange, exchange_type="topic", durable=True)
        # A durable queue of our own: records wait here while we are down (a stream keeps them).
        channel.queue_declare(args.queue, durable=True, arguments={"x-queue-type": args.queue_type})
        for key in args.bind:
            channel.queue_bind(args.queue, args.exchange, routing_key=key)
        # Bounded in-flight messages; a stream queue refuses consumers without it.
        channel.basic_qos(prefetch_count=args.prefetch)
        channel.basic_consume(args.queue, on_message, auto_ack=False, arguments=consume_args)
        print(f"ready: queue {args.queue} ({args.queue_type}) bound to {args.exchange} with {', '.join(args.bind)}",
              file=sys.stderr, flush=True)
        channel.start_consuming()
    except Stop:
        pass
    finally:
        if connection is not None and connection.is_open:
            try:
                connection.close()  # unacknowledged messages go back to the queue
            except Exception:
                pass
        print(f"stopped: {counts['records']} records, {counts['duplicates']} duplicates", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
