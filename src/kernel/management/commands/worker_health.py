"""``manage.py worker_health --queue Q``: exit 0 while a pool of Q is alive, 1 when it is
dead or stuck (no heartbeat from its keeper thread for ``--max-age`` seconds), 2 when the
heartbeats cannot be read (Redis). ``--here``: only pools on this host (the container
health check: bin/switchyard healthcheck)."""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from kernel.health import pool_heartbeats

QUEUES = ("priority", "default", "low")


class Command(BaseCommand):
    help = "Exit non-zero when the worker pool of a queue is dead or stuck (its heartbeat is missing or old)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", required=True, choices=QUEUES)
        parser.add_argument("--max-age", type=float, default=15.0, help="seconds without a heartbeat (default 15)")
        parser.add_argument("--here", action="store_true", help="only pools running on this host")

    def handle(self, *args: Any, **options: Any) -> None:
        queue: str = options["queue"]
        try:
            beats = pool_heartbeats(queue)
        except Exception as exc:  # Redis unreachable: the health is unknown, not healthy
            self.stderr.write(f"worker_health: cannot read the heartbeats of {queue} ({type(exc).__name__})")
            sys.exit(2)
        if options["here"]:
            host = socket.gethostname()
            beats = [beat for beat in beats if beat.host == host]
        now = time.time()
        fresh = [beat for beat in beats if now - beat.at <= options["max_age"]]
        for beat in sorted(beats, key=lambda b: b.node):
            state = "alive" if beat in fresh else "STALE"
            self.stdout.write(
                f"{beat.node} {state} heartbeat {now - beat.at:.1f}s ago, {beat.in_flight}/{beat.slots} in flight"
            )
        if not fresh:
            where = " on this host" if options["here"] else ""
            self.stderr.write(f"worker_health: no live pool of queue {queue}{where} (max age {options['max_age']} s)")
            sys.exit(1)
