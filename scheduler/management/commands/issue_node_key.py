"""Issue (or replace) the agent key of a node and print it once."""

import structlog
from django.core.management.base import BaseCommand, CommandError

from marketplace.models import Node
from scheduler.agents import node_credential_issue


class Command(BaseCommand):
    help = "Print a new agent key for the node with this hostname; the previous key stops working."

    def add_arguments(self, parser):
        parser.add_argument("hostname")

    def handle(self, *args, hostname: str, **options):
        node = Node.objects.filter(hostname=hostname).first()
        if node is None:
            raise CommandError(f"No node {hostname!r}. List nodes in the admin under Marketplace > Nodes.")
        # The audit trail names the command as the actor, since a shell has no user.
        structlog.contextvars.bind_contextvars(task="manage.py issue_node_key")
        self.stdout.write(node_credential_issue(node=node))
